"""A trained model, loaded to sample from without a server: `genray.load` and `genray sample`.

    genray sample models:/diffusion-digits@champion -n 64 -o grid.png --set guidance_scale=3
    genray sample runs:/<RUN_ID> --class-label 7 -o sevens.png

    model = genray.load("models:/diffusion-digits@champion")
    x = model.sample(64, seed=0, class_labels=[7], guidance_scale=3.0)
    model.save_grid(x, "sevens.png")

The model is found like any model reference (registry, run, bare run id, checkpoint directory),
rebuilt from safetensors + JSON, sampled with its typed settings (a checkpoint's
sampling_defaults, then the caller's), and written the way its data kind is shown: image kinds
as a PNG grid.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from genray.components import checkpoint
from genray.components.data import DatasetInfo, image_grid, save_png
from genray.components.data.show import SEPARATOR, render
from genray.components.models.directions import edit as edit_images
from genray.components.samplers import text
from genray.components.errors import UserError
from genray.pipelines import sampling, tracking
from genray.pipelines.env import project_home


@dataclass
class LoadedModel:
    """A trained genray model ready to sample: `module` is the family's torch module in eval
    mode, `data` the description of what it was trained on, `defaults` the sampling settings its
    checkpoint carries (a sampling-time sweep's winner), `ref` what it was loaded from."""
    module: torch.nn.Module
    data: DatasetInfo
    defaults: dict[str, Any] | None
    ref: str
    state: dict[str, Any]
    # A registered version's attribute directions (`genray directions`), what edit() moves along.
    directions: Any = None
    home: Path | None = None  # the project home it was loaded from (named indexes live there)

    @property
    def family(self) -> str:
        return self.state["model"]["family"]

    @property
    def conditioning(self) -> str:
        return self.module.conditioning

    @property
    def num_classes(self) -> int:
        return self.module.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def settings(self, **given: Any):
        """The sampling settings a call with `given` uses (typed, validated, defaults filled)."""
        return sampling.resolve(self.module, given, self.defaults, label="")

    @torch.no_grad()
    def sample(self, n: int = 16, *, seed: int = 0, class_labels: list[int] | None = None,
               prompt: str | list[str] | None = None, index: Any = None, **settings: Any) -> torch.Tensor:
        """n samples as a tensor in the data's range ([-1, 1] for images), the same for the same
        seed. class_labels: one label for all, or one per sample (class-conditional models);
        prompt: text-conditional models; index: a retrieval model retrieves from this index (its
        name under the project home's indexes/, a folder, or an Index) instead of its own;
        settings: the model's sampling settings by name."""
        if n < 1:
            raise UserError(f"n: at least one sample, got {n}")
        kwargs = self.conditions(n, class_labels, prompt)
        if index is not None:
            kwargs["index"] = self.index(index)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return self.module.sample(n, generator=generator, **kwargs, **self.settings(**settings).model_dump())

    def index(self, index: Any, field_name: str = "index"):
        """A retrieval index for this model: an Index, or its name or folder, checked to come from
        the model's own CLIP."""
        from genray.components.models.retrieval import Index
        from genray.pipelines.retrieval import resolve_index

        if "retrieval" not in self.module.capabilities:
            raise UserError(f"{field_name}: {self.ref} does not retrieve; an index is for a model trained with "
                            "conditioning: retrieval")
        if not isinstance(index, Index):
            index = resolve_index(str(index), self.home or project_home(), field_name=field_name)
        return self.module.checked_index(index, field_name)

    def conditions(self, n: int, class_labels: list[int] | None, prompt: str | list[str] | None, *,
                   names: tuple[str, str] = ("class_labels", "prompt")) -> dict[str, Any]:
        """The model's condition arguments (y, prompt) for n samples, checked against what the
        model takes; an error names the caller's option (`names`: how it spells the two)."""
        label_name, prompt_name = names
        kwargs: dict[str, Any] = {}
        if class_labels is not None:
            labels = list(class_labels)
            if self.conditioning != "class":
                raise UserError(f"{label_name}: {self.ref} is not class-conditional (conditioning: {self.conditioning})")
            bad = [k for k in labels if not 0 <= k < self.num_classes]
            if bad:
                raise UserError(f"{label_name} {bad[0]}: this model's classes are 0..{self.num_classes - 1}")
            labels = labels * n if len(labels) == 1 else labels
            if len(labels) != n:
                raise UserError(f"{label_name}: give one label, or one per sample ({n}); got {len(class_labels)}")
            kwargs["y"] = torch.tensor(labels, dtype=torch.long, device=self.device)
        if prompt is not None:
            if self.conditioning != "text":
                raise UserError(f"{prompt_name}: {self.ref} is not text-conditional (conditioning: {self.conditioning})")
            kwargs["prompt"] = prompt
        return kwargs

    # -- text (models with the "generate_text" capability: GPT)

    def generate(self, prompt: str | list[str] = "", n: int | None = None, *, seed: int = 0,
                 stop: list[str] | None = None, class_labels: list[int] | None = None, **settings: Any) -> list[str]:
        """The text each prompt continues with (the prompt not repeated), the same for the same
        seed. prompt: one for every sample, or one per sample; n: how many (default: one per
        prompt); stop: strings that end a sample where they first appear (not returned)."""
        out: list[str] | None = None
        for pieces in self.stream(prompt, n, seed=seed, stop=stop, class_labels=class_labels, **settings):
            out = pieces if out is None else [o + p for o, p in zip(out, pieces)]
        return out or []

    def stream(self, prompt: str | list[str] = "", n: int | None = None, *, seed: int = 0,
               stop: list[str] | None = None, class_labels: list[int] | None = None,
               **settings: Any) -> Iterator[list[str]]:
        """`generate` token by token: yields each sample's new text ("" while held back or stopped)."""
        if "generate_text" not in self.module.capabilities:
            raise UserError(f"{self.ref} ({self.family}) does not generate text; its samples are shown as "
                            f"{self.data.kind.show}: use sample()")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts) if n is None else n
        if n < 1:
            raise UserError(f"n: at least one sample, got {n}")
        if len(prompts) == 1:
            prompts = prompts * n
        if len(prompts) != n:
            raise UserError(f"prompt: give one prompt, or one per sample ({n}); got {len(prompts)}")
        y = self.conditions(n, class_labels, None).get("y")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return text.stream_text(self.module, prompts, self.data.vocab, generator=generator, stop=stop, y=y,
                                **self.settings(**settings).model_dump())

    # -- attribute edits (models that encode and decode, with directions from `genray directions`)

    @torch.no_grad()
    def edit(self, x: torch.Tensor, direction: str, amount: float = 1.0) -> torch.Tensor:
        """Images x (B, C, H, W) in [-1, 1] moved `amount` (in [-3, 3]) along one of the version's
        attribute directions (`directions.names`): decode(encode(x) + amount d), as POST /edit does."""
        if self.directions is None:
            raise UserError(f"{self.ref}: no attribute directions; fit them with `genray directions {self.ref}` "
                            "(a registered version then carries them)")
        return edit_images(self.module, x.to(self.device).float(), self.directions, direction, amount)

    def save_grid(self, x: torch.Tensor, path: str | Path) -> Path:
        """Image samples as one PNG grid at `path`."""
        path = Path(path)
        if self.data.kind.show != "grid":
            raise UserError(f"{self.ref}: its samples are shown as {self.data.kind.show}, not as an image grid")
        if path.suffix.lower() != ".png":
            raise UserError(f"{path}: image samples are written as a PNG grid; name a .png file")
        if not path.parent.is_dir():
            raise UserError(f"{path}: no such folder {path.parent}")
        save_png(image_grid(x.cpu()), path)
        return path


def load(ref: str | Path, *, device: str = "cpu", home: Path | None = None) -> LoadedModel:
    """The model `ref` names: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, a bare run
    id, or a checkpoint directory; anything with a `run_id` (genray.train's result) works too."""
    ref = getattr(ref, "model_uri", None) or getattr(ref, "run_id", None) or ref
    ref = str(ref)
    if tracking.looks_like_run_id(ref):
        ref = f"runs:/{ref}"
    home = home or project_home()
    uri = tracking.tracking_uri(home)
    ckpt = tracking.resolve_checkpoint(ref, uri, home / "cache")
    module, state = checkpoint.build_model(ckpt, map_location=device)
    directions = None
    if ref.startswith("models:/") and {"encode", "decode"} <= set(module.capabilities):
        directions = tracking.version_directions(uri, home, *tracking.model_version_of(ref, uri))
    return LoadedModel(module, DatasetInfo.from_json(state["model"]["data"]), state.get("sampling_defaults"), ref, state,
                       directions, home)


@dataclass(frozen=True)
class Sampled:
    path: Path
    n: int
    model: str
    settings: str


def sample_to_file(target: str, out: Path | None, *, n: int = 64, seed: int = 0, overrides: list[str] | None = None,
                   class_labels: list[int] | None = None, prompt: str | None = None, stop: list[str] | None = None,
                   index: str | None = None, home: Path | None = None) -> Sampled:
    """`genray sample`: n samples of `target` written to `out` (default samples.png; samples.txt
    for a text model, where "-" streams the samples to standard output; samples.wav for audio)."""
    if n < 1:
        raise UserError(f"-n: at least one sample, got {n}")
    model = load(target, home=home)
    if "generate_text" in model.module.capabilities:
        return _text_to_file(model, target, out or Path("samples.txt"), n=n, seed=seed, overrides=overrides,
                             class_labels=class_labels, prompt=prompt or "", stop=stop)
    show = model.data.kind.show
    suffix = {"grid": ".png", "player": ".wav"}.get(show)
    out = out or Path(f"samples{suffix or '.png'}")
    if stop:
        raise UserError(f"--stop: {target} does not generate text; stop strings are for text models")
    if suffix is None:
        raise UserError(f"{target}: its samples are shown as {show}; genray sample writes image grids, text and "
                        "audio so far")
    if out.suffix.lower() != suffix:
        what = "image samples are written as a PNG grid" if show == "grid" else "audio samples are written as a WAV file"
        raise UserError(f"-o {out}: {what}; name a {suffix} file")
    given = sampling.parse_overrides(overrides or [], prefix_required=False)
    settings = sampling.resolve(model.module, given, model.defaults, label="--set ")
    model.conditions(n, class_labels, prompt, names=("--class-label", "--prompt"))
    chosen = model.index(index, "--index") if index is not None else None
    x = model.sample(n, seed=seed, class_labels=class_labels, prompt=prompt, index=chosen, **settings.model_dump())
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: no such folder {out.parent}")
    if show == "grid":
        model.save_grid(x, out)
    else:
        out.write_bytes(render(x, model.data).data)
    shown = ", ".join(f"{k}={v}" for k, v in settings.model_dump().items()) or "no settings"
    return Sampled(out, n, target, shown)


def _text_to_file(model: LoadedModel, target: str, out: Path, *, n: int, seed: int, overrides: list[str] | None,
                  class_labels: list[int] | None, prompt: str, stop: list[str] | None) -> Sampled:
    """Text samples, each the prompt and what follows it: into a .txt file (separated by a
    line of dashes), or with -o - onto standard output as they are generated."""
    to_stdout = str(out) == "-"
    if not to_stdout and out.suffix.lower() != ".txt":
        raise UserError(f"-o {out}: text samples are written as a .txt file, or to standard output with -o -")
    if not to_stdout and not out.parent.is_dir():
        raise UserError(f"-o {out}: no such folder {out.parent}")
    given = sampling.parse_overrides(overrides or [], prefix_required=False)
    settings = sampling.resolve(model.module, given, model.defaults, label="--set ")
    try:
        pieces = model.stream(prompt, n, seed=seed, stop=stop, class_labels=class_labels, **settings.model_dump())
    except UserError as e:  # name the command-line option, not the API's argument
        raise UserError(f"--{e}" if str(e).startswith(("prompt", "stop")) else str(e)) from None
    texts = [prompt] * n
    if to_stdout:
        # The first sample appears as it is generated; the others (generated alongside) after it.
        sys.stdout.write(prompt)
        for step in pieces:
            sys.stdout.write(step[0])
            sys.stdout.flush()
            texts = [t + p for t, p in zip(texts, step)]
        sys.stdout.write("".join(SEPARATOR + t for t in texts[1:]) + "\n")
        sys.stdout.flush()
    else:
        for step in pieces:
            texts = [t + p for t, p in zip(texts, step)]
        out.write_text(SEPARATOR.join(texts) + "\n", encoding="utf-8")
    shown = ", ".join(f"{k}={v}" for k, v in settings.model_dump().items())
    return Sampled(out, n, target, shown)

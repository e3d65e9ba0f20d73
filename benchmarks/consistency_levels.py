"""Where a distilled consistency model is inconsistent: per noise level, the mean squared gap
between f(x + s_n z, s_n) and the point its teacher's probability-flow ODE reaches from there.

    .venv/bin/python benchmarks/consistency_levels.py models:/consistency-cd-v-ict-digits/1 \
        [models:/consistency-cd-v-digits/1 ...] [--rows 200] [--substeps 40]

The ODE is the teacher's deterministic DDIM step (the one distillation takes, components/models/
consistency.py) over `substeps` log-spaced sub-steps from s_n down to sigma_min, from the first
`--rows` held-out images of the model's data, noised with one seeded z shared by every level and
model. A perfect consistency function has gap 0 at every level; |ODE - x|^2 beside it is how far
the ODE moves a noised image (the scale of the task at that level). Several models must share a
teacher and data.
"""
from __future__ import annotations

import argparse
import json
import math

import torch


def ode_end(model, x: torch.Tensor, sigma: float, y, substeps: int) -> torch.Tensor:
    """The teacher's ODE from x at noise sigma to sigma_min, in `substeps` DDIM steps."""
    from genray.components.models.consistency import SIGMA_MIN, teacher_ddim_step, teacher_table, interp

    log_sigma_t, t_table = teacher_table(model.teacher.schedule.alphas_cumprod)
    denoise = model.teacher_denoiser(y, len(x), x.device)
    grid = torch.exp(torch.linspace(math.log(sigma), math.log(SIGMA_MIN), substeps + 1)).tolist()
    for hi, lo in zip(grid[:-1], grid[1:]):
        s_hi, s_lo = (torch.full((len(x), 1, 1, 1), v) for v in (hi, lo))
        t = interp(s_hi.flatten().log(), log_sigma_t.float(), t_table.float())
        x = teacher_ddim_step(denoise, x, s_hi, s_lo, t, prediction=model.teacher.prediction)
    return x.clamp(-1.0, 1.0)


def main(argv: list[str] | None = None) -> None:
    import genray
    from genray.pipelines.quality import read_split
    from genray.pipelines.tokenizing import resolve_source

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="distilled consistency models (same teacher, same data)")
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--substeps", type=int, default=40)
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)

    loaded = [genray.load(ref) for ref in args.models]
    first = loaded[0]
    if first.module.teacher is None:
        raise SystemExit(f"{args.models[0]} has no teacher: the gap is measured against a teacher's ODE")
    from genray.pipelines import tracking
    from genray.pipelines.env import project_home

    home = project_home()
    ckpt = tracking.resolve_checkpoint(first.ref, tracking.tracking_uri(home), home / "cache")
    source = resolve_source(None, size="full", seed=0, checkpoint=ckpt, home=home, splits=("test",))
    split = read_split(source.files["test"], args.rows)
    x = split.x
    y = torch.as_tensor(split.y) if first.module.num_classes else None
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    model = first.module.eval()
    rows = []
    with torch.no_grad():
        for n in range(1, model.num_levels):
            sigma = float(model.sigmas[n])
            s = torch.full((len(x), 1, 1, 1), sigma)
            noised = x + s * z
            end = ode_end(model, noised, sigma, y, args.substeps)
            gaps = [float((m.module.eval().consistency_fn(noised, s, y).clamp(-1, 1) - end).pow(2).mean())
                    for m in loaded]
            rows.append({"level": n, "sigma": sigma, "gaps": gaps, "ode_move": float((end - x).pow(2).mean())})
    print(f"{'level':>5} {'sigma':>8}  " + "  ".join(f"gap {i + 1:<6}" for i in range(len(loaded))) + "  |ODE - x|^2")
    for r in rows:
        print(f"{r['level']:5d} {r['sigma']:8.3f}  " + "  ".join(f"{g:10.4f}" for g in r["gaps"])
              + f"  {r['ode_move']:10.4f}")
    for i, ref in enumerate(args.models):
        print(f"gap {i + 1}: {ref}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"models": args.models, "rows": rows, "substeps": args.substeps, "images": len(x)}, f, indent=1)


if __name__ == "__main__":
    main()

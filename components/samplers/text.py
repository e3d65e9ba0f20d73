"""Text in and out of a token model (capability "generate_text"): prompts to ids, ids back to
text as they are generated, stop strings.

A model with "generate_text" has `stream(n, *, generator, y=, prompt_tokens=, **settings)`
yielding each row's next token id, (n,), one step at a time (components/models/gpt.py). This file
knows nothing of a family: it maps characters through the dataset's vocabulary (index = id) and
decides what text each row may show so far.

Stop strings end a row where one first appears; the stop string itself is not returned (as
OpenAI's and Hugging Face's APIs do). While streaming, text that could still become a stop
string is held back until the next token settles it, so a client never receives text that a
stop string later takes back. Generation ends when every row has stopped or max_new_tokens is
reached.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from genray.components.errors import UserError

MAX_STOPS, MAX_STOP_LEN = 4, 32


def is_character_vocab(vocab: Sequence[str] | None) -> bool:
    """True when every token is one character: text maps to ids one character at a time."""
    return bool(vocab) and all(len(t) == 1 for t in vocab)


def encode_prompt(prompt: str, vocab: Sequence[str], *, field_name: str = "prompt") -> list[int]:
    """A prompt's characters -> token ids. A character the vocabulary lacks is a UserError that
    names it, its position and what the vocabulary holds."""
    if not prompt:
        return []
    if not is_character_vocab(vocab):
        raise UserError(f"{field_name}: this model's tokens are not characters (e.g. {list(vocab[:3])}), so it "
                        "takes no text prompt; leave it empty")
    index = {c: i for i, c in enumerate(vocab)}
    ids = []
    for pos, ch in enumerate(prompt):
        if ch not in index:
            raise UserError(f"{field_name}: character {ch!r} (position {pos}) is not in the model's vocabulary of "
                            f"{len(vocab)} characters ({describe_vocab(vocab)})")
        ids.append(index[ch])
    return ids


def describe_vocab(vocab: Sequence[str]) -> str:
    """A short, readable account of a character vocabulary for error messages."""
    printable = "".join(c for c in vocab if c.isprintable())
    extra = [repr(c) for c in vocab if not c.isprintable()]
    text = repr(printable if len(printable) <= 60 else printable[:57] + "...")
    return text + (f" and {', '.join(extra)}" if extra else "")


def check_stops(stop: Sequence[str] | None, *, field_name: str = "stop") -> tuple[str, ...]:
    """Stop strings as given, checked: at most MAX_STOPS, each 1..MAX_STOP_LEN characters."""
    stops = tuple(stop or ())
    if len(stops) > MAX_STOPS:
        raise UserError(f"{field_name}: at most {MAX_STOPS} stop strings, got {len(stops)}")
    for s in stops:
        if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_LEN:
            raise UserError(f"{field_name}: each stop string has 1 to {MAX_STOP_LEN} characters, got {s!r}")
    return stops


@dataclass
class StopScanner:
    """One row's text as it grows: what may be shown, and whether a stop string ended it."""

    stops: tuple[str, ...]
    text: str = ""  # everything generated, stop strings included
    shown: int = 0  # characters of text already released
    done: bool = False
    end: int | None = field(default=None)  # where the released text ends for good (a stop string's start)

    def feed(self, piece: str) -> str:
        """Add generated text; return what may be released now."""
        if self.done:
            return ""
        self.text += piece
        # No stop string starts inside released text: its start would have been held back.
        first = min((i for i in (self.text.find(s, self.shown) for s in self.stops) if i >= 0), default=-1)
        if first >= 0:
            self.done, self.end = True, first
            return self._release(first)
        # Hold back the longest tail that is a proper prefix of some stop string.
        hold = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - hold)

    def flush(self) -> str:
        """At the end of generation: release what was held back (it never became a stop string)."""
        return self._release(self.end if self.end is not None else len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self.shown:upto] if upto > self.shown else ""
        self.shown = max(self.shown, upto)
        return out


def stream_text(model: Any, prompts: Sequence[str], vocab: Sequence[str], *, generator=None, stop=None,
                y=None, **settings: Any) -> Iterator[list[str]]:
    """Text generation: yields, step by step, the new text of each of the len(prompts) rows
    ("" while a row holds back or has stopped), and a last list with what was held back at the
    end. Prompts are not repeated in the output. Checked before the first token: characters
    outside the vocabulary, stop strings, the model's settings (its `stream` raises)."""
    if "generate_text" not in model.capabilities:
        raise UserError(f"{type(model).__name__} does not generate text (capabilities: {sorted(model.capabilities)})")
    stops = check_stops(stop)
    one = len(set(prompts)) == 1  # one prompt for every row: name it as the caller gave it
    ids = [encode_prompt(p, vocab, field_name="prompt" if one else f"prompt[{i}]") for i, p in enumerate(prompts)]
    tokens = model.stream(len(prompts), generator=generator, y=y, prompt_tokens=ids, **settings)
    return _texts(tokens, vocab, [StopScanner(stops) for _ in prompts])


def _texts(tokens: Iterator[Any], vocab: Sequence[str], rows: list[StopScanner]) -> Iterator[list[str]]:
    try:
        for step in tokens:
            yield [row.feed(vocab[t]) for row, t in zip(rows, step.tolist())]
            if all(row.done for row in rows):
                break
    finally:
        tokens.close()  # stopped early or abandoned by the caller: the model's stream ends now
    yield [row.flush() for row in rows]


def generate_text(model: Any, prompts: Sequence[str], vocab: Sequence[str], **kwargs: Any) -> list[str]:
    """stream_text, collected: each row's whole new text."""
    out = ["" for _ in prompts]
    for pieces in stream_text(model, prompts, vocab, **kwargs):
        out = [o + p for o, p in zip(out, pieces)]
    return out

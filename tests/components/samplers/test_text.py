"""Text in and out of a token model: prompts through the vocabulary, stop strings, streaming."""
import pytest
import torch

from genray.components.data import DatasetInfo
from genray.components.errors import UserError
from genray.components.models.gpt import build_gpt
from genray.components.samplers.text import StopScanner, encode_prompt, generate_text, stream_text

VOCAB = tuple("abcde \n")


def gpt(seed: int = 0):
    torch.manual_seed(seed)
    return build_gpt(data=DatasetInfo("tokens", (24,), 10, 0, VOCAB, ("tokens",)), size="tiny").eval()


def seed(s: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(s)


def test_prompt_characters_map_through_the_vocabulary_and_strangers_are_named():
    assert encode_prompt("bad a", VOCAB) == [1, 0, 3, 5, 0]
    assert encode_prompt("", VOCAB) == []
    with pytest.raises(UserError, match=r"character 'z' \(position 2\) is not in the model's vocabulary of 7"):
        encode_prompt("abz", VOCAB)
    with pytest.raises(UserError, match="not characters"):
        encode_prompt("ab", ("12", "13"))


def test_stop_scanner_holds_back_what_may_become_a_stop_string():
    s = StopScanner(("END",))
    assert s.feed("abc") == "abc"
    assert s.feed("E") == ""  # may be the start of END
    assert s.feed("N") == ""
    assert s.feed("x") == "ENx"  # it was not
    assert s.feed("EN") == ""
    assert s.feed("Dzz") == "" and s.done  # END: nothing of it, nor after it, is released
    assert s.flush() == "" and s.text == "abcENxENDzz"


def test_stop_scanner_releases_a_held_tail_at_the_end():
    s = StopScanner(("\n\n", "xyz"))
    out = s.feed("ab\n") + s.feed("x")
    assert out == "ab\n" and s.flush() == "x" and not s.done  # "\nx" cannot become "\n\n"; "x" may become "xyz"


def test_a_stop_string_cuts_the_text_generation_would_have_made_without_it():
    model = gpt()
    [full] = generate_text(model, ["a"], VOCAB, generator=seed(3), max_new_tokens=23)
    stop = full[5:7]  # a two-character string that occurs in the output
    [cut] = generate_text(model, ["a"], VOCAB, generator=seed(3), stop=[stop], max_new_tokens=23)
    assert cut == full[: full.index(stop)]


def test_streamed_pieces_join_to_the_whole_text_and_stop_early():
    model = gpt()
    prompts = ["ab", "", "cd e"]
    whole = generate_text(model, prompts, VOCAB, generator=seed(1), max_new_tokens=20)
    steps = list(stream_text(model, prompts, VOCAB, generator=seed(1), max_new_tokens=20))
    assert ["".join(p[i] for p in steps) for i in range(3)] == whole
    assert len(steps) == 21  # one list per token, then what was held back
    # Every row stops on its first character: generation ends after one token.
    first = [w[0] for w in whole]
    early = list(stream_text(model, prompts, VOCAB, generator=seed(1), stop=sorted(set(first)), max_new_tokens=20))
    assert len(early) == 2 and all(p == "" for step in early for p in step)


def test_bad_requests_fail_before_the_first_token():
    model = gpt()
    with pytest.raises(UserError, match="prompt: character"):
        stream_text(model, ["q"], VOCAB)
    with pytest.raises(UserError, match="prompt\\[1\\]: character"):
        stream_text(model, ["a", "Q"], VOCAB)
    with pytest.raises(UserError, match="at most 4 stop strings"):
        stream_text(model, ["a"], VOCAB, stop=["a", "b", "c", "d", "e"])
    with pytest.raises(UserError, match="block size"):
        stream_text(model, ["a" * 10], VOCAB, max_new_tokens=20)

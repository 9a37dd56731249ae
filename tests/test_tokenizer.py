from __future__ import annotations

import pytest

from edgetts.testing import sample_corpus
from edgetts.tokenizer import HFTokenizer

CORPUS = sample_corpus() + ["   leading spaces", "trailing   ", "x\n\n\ny", "ÿ€😀", "12345678901234567890", ""]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_ids_match_transformers(arch, tiny_model):
    transformers = pytest.importorskip("transformers")
    folder = tiny_model(arch)
    ours = HFTokenizer.from_dir(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    for text in CORPUS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text
    assert ours.eos_ids == {theirs.eos_token_id}
    assert ours.bos_id == (theirs.bos_token_id if arch == "llama" else None)


def test_every_digit_is_its_own_token(tiny_model):
    tok = HFTokenizer.from_dir(tiny_model("qwen2"))
    ids = tok.encode("1791+2026", add_special=False)
    assert [tok.decode([i]) for i in ids] == list("1791+2026")


def test_chat_template_renders_like_transformers(tiny_model):
    transformers = pytest.importorskip("transformers")
    folder = tiny_model("qwen2")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    ours = HFTokenizer.from_dir(folder).apply_chat_template(messages)
    theirs = transformers.AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert ours == theirs and ours.endswith("<|im_start|>assistant\n")


def test_missing_tokenizer_says_how_to_fix(tmp_path):
    from edgetts.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        HFTokenizer.from_dir(tmp_path)

"""Tokenizer -> GGUF metadata: byte-level BPE (`gpt2` + a known `pre`) or SentencePiece (`llama`),
special tokens, add-bos/eos flags and the chat template (the last three through gguf-py's SpecialVocab).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgetts.errors import UnsupportedModelError
from edgetts.export.gguf_arch import PRE_TOKENIZER_SHAPES, PRE_TOKENIZERS


def add_tokenizer(writer, folder: Path, n_vocab: int) -> None:
    """Write the tokenizer in `folder` (tokenizer.json) into `writer`, padded to the model's n_vocab."""
    import gguf

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{folder} has no tokenizer.json; save the tokenizer with the model "
                                    "(tokenizer.save_pretrained) before exporting")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if _is_sentencepiece(spec):
        _add_sentencepiece(writer, spec, n_vocab)
    else:
        _add_bpe(writer, spec, n_vocab)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)


def _is_sentencepiece(spec: dict) -> bool:
    """Llama-2-style tokenizer.json: BPE over "▁"-words with byte fallback."""
    return spec["model"]["type"] == "BPE" and bool(spec["model"].get("byte_fallback"))


def _add_bpe(writer, spec: dict, n_vocab: int) -> None:
    import gguf

    if spec["model"]["type"] != "BPE":
        raise UnsupportedModelError(f"tokenizer model {spec['model']['type']!r} is not supported; "
                                    "edgetts exports byte-level BPE and SentencePiece (Llama-2 style) tokenizers")
    tokens = {token: i for token, i in spec["model"]["vocab"].items()}
    kinds = dict.fromkeys(tokens.values(), gguf.TokenType.NORMAL)
    for added in spec.get("added_tokens", []):
        tokens[added["content"]] = added["id"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    by_id = {i: t for t, i in tokens.items()}
    if max(by_id) >= n_vocab:
        raise UnsupportedModelError(f"the tokenizer has ids up to {max(by_id)} but the model's vocab_size is {n_vocab}")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec.get("pre_tokenizer")))
    writer.add_token_list([by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)])
    writer.add_token_types([kinds.get(i, gguf.TokenType.UNUSED) for i in range(n_vocab)])


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre_tokenizer, from the PRE_TOKENIZERS tables."""
    parts = (pre or {}).get("pretokenizers", [pre] if pre else [])
    for part in parts:
        pattern = (part.get("pattern") or {}).get("Regex") if part.get("type") == "Split" else None
        if pattern in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[pattern]
    shape = tuple(p.get("type") for p in parts)
    if shape in PRE_TOKENIZER_SHAPES:
        return PRE_TOKENIZER_SHAPES[shape]
    known = ", ".join(sorted(set(PRE_TOKENIZERS.values()) | set(PRE_TOKENIZER_SHAPES.values())))
    raise UnsupportedModelError(
        f"unknown pre-tokenizer {json.dumps(pre)[:200]}: llama.cpp would split text differently from "
        f"Hugging Face. Known: {known}; add its regex to PRE_TOKENIZERS in edgetts/export/gguf_arch.py"
    )


def _add_sentencepiece(writer, spec: dict, n_vocab: int) -> None:
    """llama.cpp's SPM tokenizer merges the adjacent pair whose result scores highest; scoring each
    token by minus the rank of the merge that makes it reproduces HF's merge order."""
    import gguf

    model = spec["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    kinds = {i: _spm_kind(t, model) for t, i in model["vocab"].items()}
    for added in spec.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added["id"] not in kinds or kinds[added["id"]] == gguf.TokenType.NORMAL:
            kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    rank = {}
    for r, merge in enumerate(model.get("merges", [])):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, r)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)])
    writer.add_token_scores([-float(rank.get(by_id.get(i), len(rank) + i)) if i in by_id else -1e9
                             for i in range(n_vocab)])
    writer.add_token_types([kinds.get(i, gguf.TokenType.UNUSED) for i in range(n_vocab)])


def _spm_kind(token: str, model: dict):
    import gguf

    if token == model.get("unk_token"):
        return gguf.TokenType.UNKNOWN
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL

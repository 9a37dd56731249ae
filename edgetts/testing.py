"""Models and doubles for tests and benchmarks, all built locally (nothing is ever downloaded).

- `train_tokenizer`: a byte-level BPE on local text, with the Qwen2 pre-tokenizer (every digit alone).
- `tiny_checkpoint`: a 2-4 layer random Hugging Face checkpoint of a real architecture.
- `shape_faithful_checkpoint`: random weights in a real model's exact shape, for speed benchmarks.
- `FakeEngine`: the `Engine` contract with scripted logits and a record of every call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from edgetts.engine import BaseEngine
from edgetts.tokenizer import Tokenizer
from edgetts.types import EngineInfo

# Qwen2's split: letters in runs, every digit alone, punctuation runs, whitespace runs.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Small but real configurations, per architecture: the registry meta-test walks this table.
TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                  tie_word_embeddings=False, rms_norm_eps=1e-5, bos=True),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                  tie_word_embeddings=True, rms_norm_eps=1e-6, bos=False),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=16, rope_theta=1000000.0,
                    sliding_window=None, tie_word_embeddings=False, rms_norm_eps=1e-5, bos=True),
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1000000.0,
                  tie_word_embeddings=True, rms_norm_eps=1e-6, bos=False),
}

# Real shapes, random weights: they cost what the real models cost to run.
SHAPE_FAITHFUL_CONFIGS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos=False),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, bos=True,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, high_freq_factor=4.0,
                                           low_freq_factor=1.0, original_max_position_embeddings=8192)),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, bos=True),
}


def sample_corpus() -> list[str]:
    """Local text with the things tokenizers get wrong: digits, whitespace runs, unicode, code."""
    lines = [
        "The quick brown fox jumps over the lazy dog.",
        "What is 37*48+15? 37*48=1776, 1776+15=1791. Answer: 1791",
        "def add(a, b):\n    return a + b\n",
        "Zürich, Málaga, Kraków and Þórshöfn — naïve café résumé.",
        "日本語のテキスト、中文文本 and emoji 🚀✨ mixed in.",
        "Tabs\tand  double  spaces   and\n\nblank lines.",
        "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 -42 1e-5",
    ]
    lines += [f"What is {a}*{b}+{a + b}? Answer: {a * b + a + b}" for a in range(2, 40, 3) for b in range(3, 30, 7)]
    return lines


def train_tokenizer(folder: str | Path, texts: Iterable[str] | None = None, vocab_size: int = 400,
                    bos: bool = False, chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """Train a byte-level BPE on `texts` and save it as a Hugging Face tokenizer in `folder`."""
    from tokenizers import Regex, Tokenizer as RawTokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts or sample_corpus()), trainer)
    bos_token = "<|begin_of_text|>" if bos else None
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, tok.token_to_id(bos_token))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=bos_token, eos_token="<|endoftext|>",
                  pad_token="<|endoftext|>", add_bos_token=bos, model_max_length=4096, clean_up_tokenization_spaces=False)
    if chat_template:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def write_checkpoint(folder: str | Path, spec: dict, seed: int = 0, init_std: float = 0.02,
                     tokenizer_from: Path | None = None) -> Path:
    """Write a random-weight Hugging Face checkpoint (safetensors + tokenizer) for `spec`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    spec = dict(spec)
    bos = spec.pop("bos")
    tokenizer_dir = tokenizer_from or train_tokenizer(folder, bos=bos)
    if tokenizer_from:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((tokenizer_from / name).read_bytes())
    tokens = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    from tokenizers import Tokenizer as RawTokenizer

    raw = RawTokenizer.from_file(str(folder / "tokenizer.json"))
    spec.setdefault("vocab_size", raw.get_vocab_size())
    spec.setdefault("max_position_embeddings", 512)
    eos_id = raw.token_to_id(tokens["eos_token"])
    bos_id = raw.token_to_id(tokens["bos_token"]) if tokens["bos_token"] else eos_id
    config = AutoConfig.for_model(spec.pop("model_type"), **spec, initializer_range=init_std,
                                  bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_checkpoint(arch: str, root: str | Path, n_layers: int = 2, seed: int = 0, init_std: float = 0.1) -> Path:
    """A tiny random checkpoint of `arch` in root/arch (reused when already written).

    init_std is larger than the usual 0.02 so next-token distributions are peaked: argmax ties
    would make cross-engine parity flaky on pure floating-point noise.
    """
    folder = Path(root) / f"{arch}-{n_layers}l-s{seed}"
    if not (folder / "config.json").is_file():
        spec = dict(TINY_CONFIGS[arch], num_hidden_layers=n_layers)
        write_checkpoint(folder, spec, seed=seed, init_std=init_std)
    return folder


def shape_faithful_checkpoint(name: str, root: str | Path, seed: int = 0) -> Path:
    """Random weights in the exact shape of a real model (see SHAPE_FAITHFUL_CONFIGS)."""
    folder = Path(root) / name
    if not (folder / "config.json").is_file():
        write_checkpoint(folder, SHAPE_FAITHFUL_CONFIGS[name], seed=seed)
    return folder


def tiny_onnx(checkpoint: str | Path, quant: str = "fp32", layers: int | None = None) -> Path:
    """`checkpoint` exported to an ONNX folder beside it (reused when already written)."""
    from edgetts.export.onnx import export_onnx

    checkpoint = Path(checkpoint)
    name = f"{checkpoint.name}.{quant.replace(':', '-').replace('=', '').replace(',', '-')}"
    out = checkpoint.parent / f"{name}{f'.k{layers}' if layers else ''}.onnx"
    if not out.exists():
        export_onnx(checkpoint, out, quant=quant, layers=layers, progress=False)
    return out


# --- FakeEngine ---------------------------------------------------------------------------

class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens, plus BOS (256) and EOS (257)."""

    bos_id = 256
    eos_ids = frozenset({257})

    @property
    def vocab_size(self) -> int:
        return 258

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        return ([self.bos_id] if add_special else []) + list(text.encode("utf-8"))

    def decode(self, ids, skip_special: bool = True) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")


def hashed_logits(prefix: tuple[int, ...], n_vocab: int) -> np.ndarray:
    """Logits that depend only on the whole prefix, so fork/truncate mistakes show up."""
    digest = hashlib.blake2b(np.asarray(prefix, dtype=np.int64).tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return rng.standard_normal(n_vocab).astype(np.float32) * 3


class FakeEngine(BaseEngine):
    """A test double: logits come from `script(prefix)`; every call is recorded in `calls`."""

    def __init__(self, script: Callable[[tuple[int, ...]], np.ndarray] | None = None,
                 n_seq_max: int = 16, n_ctx: int = 1024, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.tokenizer = tokenizer or ByteTokenizer()
        n_vocab = self.tokenizer.vocab_size
        self.script = script or (lambda prefix: hashed_logits(prefix, n_vocab))
        self.info = EngineInfo(runtime="fake", device="cpu", arch="fake", n_layers=1, n_ctx=n_ctx,
                               n_vocab=n_vocab, n_seq_max=n_seq_max)
        self.tokens: dict[int, list[int]] = {}
        self.calls: list[tuple] = []

    def _eval_batch(self, work):
        self.calls.append(("eval_batch", {s: list(t) for s, t in work.items()}))
        out = {}
        for seq, new in work.items():
            held = self.tokens.setdefault(seq, [])
            rows = []
            for token in new:
                held.append(token)
                rows.append(self.script(tuple(held)))
            out[seq] = np.stack(rows).astype(np.float32)
        return out

    def _fork(self, src, dst):
        self.calls.append(("fork", src, dst))
        self.tokens[dst] = list(self.tokens[src])

    def _truncate(self, seq, n):
        self.calls.append(("truncate", seq, n))
        del self.tokens[seq][n:]

    def _release(self, seq):
        self.calls.append(("release", seq))
        self.tokens.pop(seq, None)

"""The GGUF exporter's knowledge as data: architectures, hyperparameter keys, rope scaling,
pre-tokenizers and quantization types. Adding an architecture is a table row, not a branch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # llama.cpp's architecture name (also gguf-py's tensor-name map key)
    # HF stores q/k for rotate-half rope; llama.cpp's "llama" graph rotates interleaved pairs,
    # so those rows are permuted at export. NeoX-rope architectures (qwen2/3) need nothing.
    rotary_permute: bool


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", rotary_permute=True),  # Llama 2/3, TinyLlama, SmolLM
    "mistral": ArchSpec("llama", rotary_permute=True),  # Mistral is Llama to llama.cpp
    "qwen2": ArchSpec("qwen2", rotary_permute=False),
    "qwen3": ArchSpec("qwen3", rotary_permute=False),  # adds q/k RMS norms, mapped by name
}

# (gguf key suffix after "{arch}.", HF config key, value type); absent config keys are skipped.
HPARAMS: list[tuple[str, str, type]] = [
    ("context_length", "max_position_embeddings", int),
    ("embedding_length", "hidden_size", int),
    ("feed_forward_length", "intermediate_size", int),
    ("attention.head_count", "num_attention_heads", int),
    ("attention.head_count_kv", "num_key_value_heads", int),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps", float),
    ("rope.freq_base", "rope_theta", float),
]

# HF rope_scaling "rope_type" -> how llama.cpp is told. "llama3" is carried by a rope_freqs
# tensor (per-frequency factors); linear/yarn by metadata keys.
ROPE_SCALING = {
    "linear": "linear",
    "yarn": "yarn",
    "llama3": "rope_freqs",
    "default": None,
}

# Pre-tokenizer regex (tokenizer.json "Split" pattern) -> llama.cpp's `tokenizer.ggml.pre`.
PRE_TOKENIZERS: dict[str, str] = {
    # Qwen2/2.5/3: every digit alone.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    # Llama 3 / 3.1 / 3.2: digits in runs of up to three.
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
}
# Pre-tokenizers described by their component types rather than a regex.
PRE_TOKENIZER_SHAPES: dict[tuple[str, ...], str] = {
    ("ByteLevel",): "gpt2",
    ("Digits", "ByteLevel"): "smollm",  # SmolLM/SmolLM2: single digits, then GPT-2 bytes
}


@dataclass(frozen=True)
class QuantSpec:
    file_type: int  # llama.cpp LLAMA_FTYPE_* (also written as general.file_type)
    direct: str | None  # GGML type the gguf writer produces itself; None = llama.cpp's quantizer


# Values are llama.cpp's enum llama_ftype.
QUANTS: dict[str, QuantSpec] = {
    "f32": QuantSpec(0, "F32"),
    "f16": QuantSpec(1, "F16"),
    "bf16": QuantSpec(32, "BF16"),
    "q8_0": QuantSpec(7, "Q8_0"),
    "q6_k": QuantSpec(18, None),
    "q5_k_m": QuantSpec(17, None),
    "q4_k_m": QuantSpec(15, None),
    "q4_0": QuantSpec(2, None),
}

# Why q4_0 and not q4_k_m: K-quants need rows that are a multiple of 256. Small models (hidden
# 576, 896) are not, so llama.cpp falls back to Q5_0/Q8_0 for most tensors and "q4_k_m" ends up
# near 6.4 bits per weight, larger and slower than q4_0 (~5.7 incl. the 8-bit output).
DEFAULT_QUANT = "q4_0"

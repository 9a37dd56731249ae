"""Hugging Face checkpoint -> GGUF for llama.cpp, streamed one tensor at a time.

The plan (names, shapes, types) is made from the safetensors headers; the header is written
first, then each tensor is read, transformed and written before the next is read. f32, f16,
bf16 and q8_0 come straight from gguf-py's writer; the other types are made by llama.cpp's
own quantizer from an f16 intermediate. Everything is written beside `out` and renamed into
place only when complete.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetts.errors import ConfigError, UnsupportedModelError, choice_error
from edgetts.export import ExportReport
from edgetts.export.atomic import atomic_output
from edgetts.export.gguf_arch import ARCHS, HPARAMS, QUANTS, ROPE_SCALING, ArchSpec
from edgetts.export.source import Checkpoint, resolve_model

LAYER = re.compile(r"\.layers\.(\d+)\.")
IGNORED = ("rotary_emb.inv_freq",)  # buffers some checkpoints save; llama.cpp recomputes them


@dataclass
class TensorPlan:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    ggml_type: str  # GGMLQuantizationType member name
    load: Callable[[], np.ndarray]  # float32 data, already transformed


def export_gguf(model: str | Path, out: Path, quant: str | None = None, layers: int | None = None,
                overwrite: bool = False, progress: bool = True) -> ExportReport:
    """Export `model` to the GGUF file `out`; see the module docstring."""
    from edgetts.runtimes.gguf_file import read_header

    start = time.perf_counter()
    source = str(model)
    ckpt = Checkpoint(resolve_model(model))
    arch = arch_spec(ckpt.config)
    quant = (quant or default_quant(ckpt.config)).lower()
    if quant not in QUANTS:
        raise choice_error("GGUF quant", quant, QUANTS)
    n_layers = _check_layers(layers, ckpt.config)
    spec = QUANTS[quant]
    with atomic_output(out, overwrite=overwrite) as tmp:
        meta = dict(source=source, quant=quant, n_layers=n_layers, early_exit=layers is not None)
        if spec.direct:
            _write(tmp, ckpt, arch, spec.direct, spec.file_type, meta, progress)
        else:
            from edgetts.runtimes.llamacpp_lib import quantize

            intermediate = tmp.with_name("intermediate.f16.gguf")
            _write(intermediate, ckpt, arch, "F16", 1, meta, progress)
            with _spinner(progress, f"quantizing to {quant} with llama.cpp"):
                quantize(intermediate, tmp, spec.file_type)
            intermediate.unlink()
        header = read_header(tmp)
    return ExportReport(path=Path(out), format="gguf", quant=quant, size_bytes=Path(out).stat().st_size,
                        seconds=time.perf_counter() - start, bits_per_weight=round(header.bits_per_weight, 3),
                        layers=layers)


def arch_spec(config: dict) -> ArchSpec:
    model_type = config.get("model_type")
    if model_type not in ARCHS:
        raise UnsupportedModelError(f"architecture {model_type!r} cannot be exported to GGUF yet; "
                                    f"supported: {', '.join(sorted(ARCHS))}")
    return ARCHS[model_type]


def default_quant(config: dict) -> str:
    """q4_k_m where K-quants fit (rows a multiple of 256); q4_0 otherwise.

    On hidden sizes like 576 or 896, llama.cpp's q4_k_m falls back to Q5_0/Q8_0 for most tensors
    and lands near 6.4 bits per weight: larger and slower than q4_0 (~5.7, 8-bit output included).
    """
    hidden, ffn = config.get("hidden_size", 0), config.get("intermediate_size", 0)
    return "q4_k_m" if hidden % 256 == 0 and ffn % 256 == 0 else "q4_0"


def _check_layers(layers: int | None, config: dict) -> int:
    total = int(config["num_hidden_layers"])
    if layers is None:
        return total
    if not 1 <= layers <= total:
        raise ConfigError(f"--layers {layers} is out of range: this model has {total} layers (use 1..{total})")
    return layers


# --- plan -------------------------------------------------------------------------------

def plan_tensors(ckpt: Checkpoint, arch: ArchSpec, out_type: str, n_layers: int) -> list[TensorPlan]:
    """Every tensor the GGUF will hold, in file order, without reading any weights."""
    import gguf

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch.gguf_arch]
    names = gguf.get_tensor_name_map(arch_enum, n_layers)
    config = ckpt.config
    plans = []
    for hf_name, shape in ckpt.tensors():
        layer = LAYER.search(hf_name)
        if hf_name.endswith(IGNORED) or (layer and int(layer.group(1)) >= n_layers):
            continue
        if hf_name.startswith("lm_head.") and config.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd as the output projection
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedModelError(f"tensor {hf_name} has no GGUF name for {arch.gguf_arch}; "
                                        "this checkpoint is a variant the exporter does not know")
        plans.append(TensorPlan(name, shape, _tensor_type(shape, out_type), _loader(ckpt, hf_name, arch)))
    rope = _rope_freqs(config)
    if rope is not None:
        plans.append(TensorPlan("rope_freqs.weight", rope.shape, "F32", lambda: rope))
    return plans


def _tensor_type(shape: tuple[int, ...], out_type: str) -> str:
    """1-D tensors (norms, biases) stay f32; Q8_0 needs rows that are a multiple of 32."""
    if len(shape) < 2:
        return "F32"
    if out_type == "Q8_0" and shape[-1] % 32:
        return "F16"
    return out_type


def _loader(ckpt: Checkpoint, hf_name: str, arch: ArchSpec) -> Callable[[], np.ndarray]:
    config = ckpt.config
    heads = None
    if arch.rotary_permute and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        heads = config["num_attention_heads"]
    elif arch.rotary_permute and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    if heads is None:
        return lambda: ckpt.load(hf_name)
    return lambda: rotary_permute(ckpt.load(hf_name), heads)


def rotary_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head from rotate-half order (x0..x_{d/2-1}, y0..) to interleaved pairs (x0, y0, ...)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_freqs(config: dict) -> np.ndarray | None:
    """Llama 3 rope scaling as llama.cpp's per-frequency divisors (the rope_freqs tensor)."""
    scaling = config.get("rope_scaling") or {}
    if ROPE_SCALING.get(scaling.get("rope_type", scaling.get("type"))) != "rope_freqs":
        return None
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (config.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    old_ctx = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    wavelen = 2 * np.pi / freqs
    smooth = np.clip((old_ctx / wavelen - low) / (high - low), 0.0, 1.0)
    divisor = 1.0 / ((1 - smooth) / factor + smooth)  # 1 for short wavelengths, `factor` for long ones
    return divisor.astype(np.float32)


# --- write ------------------------------------------------------------------------------

def _write(path: Path, ckpt: Checkpoint, arch: ArchSpec, out_type: str, file_type: int,
           meta: dict, progress: bool) -> None:
    import gguf

    plans = plan_tensors(ckpt, arch, out_type, meta["n_layers"])
    writer = gguf.GGUFWriter(path, arch.gguf_arch)
    _add_metadata(writer, ckpt, file_type, meta)
    for plan in plans:
        qtype = gguf.GGMLQuantizationType[plan.ggml_type]
        byte_shape = gguf.quants.quant_shape_to_byte_shape(plan.shape, qtype)
        writer.add_tensor_info(plan.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with _bar(progress, "writing GGUF", len(plans)) as advance:
        for plan in plans:
            writer.write_tensor_data(_encode(plan.load(), plan.ggml_type))
            advance()
    writer.close()


def _encode(data: np.ndarray, ggml_type: str) -> np.ndarray:
    """float32 -> the bytes of `ggml_type` (as uint8, so the writer takes every type alike)."""
    import gguf

    if ggml_type == "F32":
        return np.ascontiguousarray(data, dtype=np.float32).view(np.uint8)
    if ggml_type == "F16":
        return np.ascontiguousarray(data.astype(np.float16)).view(np.uint8)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType[ggml_type])


def _add_metadata(writer, ckpt: Checkpoint, file_type: int, meta: dict) -> None:
    import gguf

    from edgetts import __version__
    from edgetts.export.gguf_vocab import add_tokenizer

    config, arch = ckpt.config, writer.arch
    writer.add_name(ckpt.folder.name)
    writer.add_block_count(meta["n_layers"])
    for key, hf_key, kind in HPARAMS:
        if config.get(hf_key) is not None:
            value_type = gguf.GGUFValueType.UINT32 if kind is int else gguf.GGUFValueType.FLOAT32
            writer.add_key_value(f"{arch}.{key}", kind(config[hf_key]), value_type)
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    _add_rope_scaling(writer, config)
    n_vocab = int(config["vocab_size"])
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("edgetts.version", __version__)
    writer.add_string("edgetts.source", meta["source"])
    writer.add_string("edgetts.quant", meta["quant"])
    if meta["early_exit"]:
        writer.add_uint32("edgetts.early_exit_layers", meta["n_layers"])
        writer.add_uint32("edgetts.source_layers", int(config["num_hidden_layers"]))
    add_tokenizer(writer, ckpt.folder, n_vocab)


def _add_rope_scaling(writer, config: dict) -> None:
    import gguf

    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if not scaling or ROPE_SCALING.get(kind, "?") in (None, "rope_freqs"):
        return
    if kind not in ROPE_SCALING:
        raise UnsupportedModelError(f"rope scaling {kind!r} is not supported; supported: "
                                    f"{', '.join(k for k in ROPE_SCALING if k != 'default')}")
    writer.add_rope_scaling_type(gguf.RopeScalingType(ROPE_SCALING[kind]))
    writer.add_rope_scaling_factor(float(scaling["factor"]))
    if "original_max_position_embeddings" in scaling:
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))


# --- progress ---------------------------------------------------------------------------

@contextmanager
def _bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar over `total` steps; yields the function that advances it."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _spinner(enabled: bool, label: str):
    if not enabled:
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(label)

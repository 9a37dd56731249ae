"""Quantize an fp32 ONNX decoder with ONNX Runtime's own tools.

| quant | tool                                   | what changes                                          |
|-------|----------------------------------------|-------------------------------------------------------|
| fp32  | none                                   | the optimum export as is                              |
| fp16  | onnxruntime.transformers.float16       | weights, activations and KV tensors in float16 (GPU)  |
| int8  | quantize_dynamic (per-channel weights) | MatMul -> DynamicQuantizeMatMul, Gather -> int8       |
| int4  | MatMulNBitsQuantizer                   | MatMul -> MatMulNBits, Gather -> GatherBlockQuantized |

The embedding Gather and the LM-head MatMul are quantized too: on a tied-embedding model such as
Qwen2.5-0.5B they are a quarter of the weights, and leaving them in fp32 is most of the gap to
onnxruntime-genai's own int4 build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from edgetts.errors import ConfigError, choice_error

PROTOBUF_LIMIT = 2_000_000_000  # bytes: larger models must keep their weights in an external file


@dataclass(frozen=True)
class QuantSpec:
    """A quantization choice, parsed from `int4` or `int4:block_size=128,accuracy_level=0`."""

    name: str
    block_size: int = 32  # onnxruntime-genai's builder default: better quality than 128 at ~0.75 bpw more
    accuracy_level: int = 4  # int8 activations inside MatMulNBits on CPU: the fast path
    symmetric: bool = True  # no zero points: smaller and faster, as onnxruntime-genai's builder does
    tied: bool = False  # the checkpoint ties embedding and LM head: the int4 export stores them once
    options: dict = field(default_factory=dict, compare=False)

    @classmethod
    def parse(cls, text: str | None) -> QuantSpec:
        name, _, rest = (text or DEFAULT_QUANT).lower().partition(":")
        if name not in QUANTIZERS:
            raise choice_error("ONNX quant", name, QUANTIZERS)
        options = dict(_parse_option(item) for item in rest.split(",") if item.strip())
        unknown = set(options) - INT4_OPTIONS.keys()
        if unknown or (options and name != "int4"):
            valid = ", ".join(f"{k} ({v.__name__})" for k, v in INT4_OPTIONS.items())
            raise ConfigError(f"quant option(s) {sorted(unknown or options)} not valid for {name}; "
                              f"int4 takes: {valid}, e.g. int4:block_size=128,accuracy_level=0")
        typed = {k: INT4_OPTIONS[k](v) for k, v in options.items()}
        spec = cls(name, **typed, options=typed)
        spec.check()
        return spec

    def check(self) -> None:
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size={self.block_size} is invalid: use a power of two >= 16 (32, 64, 128)")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level={self.accuracy_level} is invalid: use 0 (unset), 1 (fp32), "
                              "2 (fp16), 3 (bf16) or 4 (int8 activations)")

    def describe(self) -> dict:
        # Dynamic int8 picks one activation scale per tensor, so a sequence's logits depend on the
        # other rows of its batch; MatMulNBits (int4, accuracy level 4) quantizes activations per row block.
        out = {"name": self.name, "batch_invariant": self.name != "int8"}
        if self.name == "int4":
            out.update(block_size=self.block_size, accuracy_level=self.accuracy_level, symmetric=self.symmetric,
                       tied_head_shared=self.tied and self.symmetric)
        return out


def _parse_option(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ConfigError(f"quant option {item!r} needs a value, e.g. block_size=32")
    return key.strip(), value.strip()


def _bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes")


INT4_OPTIONS = {"block_size": int, "accuracy_level": int, "symmetric": _bool}


def quantize(src: Path, dest: Path, spec: QuantSpec) -> None:
    """Read the fp32 model at `src` and write the `spec` version of it to `dest` (a .onnx path)."""
    QUANTIZERS[spec.name](src, dest, spec)


def _copy_fp32(src: Path, dest: Path, spec: QuantSpec) -> None:
    import shutil

    shutil.move(src, dest)
    weights = src.with_name(f"{src.name}_data")  # optimum's external weights file, for models over 2 GB;
    if weights.exists():  # the graph refers to it by this name, so it keeps it
        shutil.move(weights, dest.with_name(weights.name))


def _fp16(src: Path, dest: Path, spec: QuantSpec) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types=False: the KV cache travels in fp16 too, halving its memory traffic.
    save_model(convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True), dest)


def _int8(src: Path, dest: Path, spec: QuantSpec) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("onnxruntime", "root"):
        quantize_dynamic(str(src), str(dest), op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=_is_large(src))


def _int4(src: Path, dest: Path, spec: QuantSpec) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=spec.block_size, is_symmetric=spec.symmetric,
        accuracy_level=spec.accuracy_level or None,
        op_types_to_quantize=("MatMul", "Gather"), quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    import numpy as np

    with _quiet("onnxruntime", "onnxruntime.quantization.matmul_nbits_quantizer", "root"), np.errstate(all="ignore"):
        quantizer.process()  # all-zero blocks divide by a zero scale; the quantizer maps them to 0
    model = quantizer.model.model
    if spec.tied and spec.symmetric:
        share_tied_head(model)
    save_model(model, dest)


def share_tied_head(model) -> bool:
    """Serve the embedding from the int4 LM head's weights, as onnxruntime-genai does (~70 MB less on Qwen2.5-0.5B).

    With tied embeddings both hold the same matrix. MatMulNBits stores it as (vocab, blocks, block/2)
    uint8 with an implicit zero point of 8 (symmetric), which is GatherBlockQuantized's uint8
    convention, so the gather reads those bytes directly (quantized along the last axis); only the
    per-block scales are copied into the gather's (vocab, blocks, 1) shape.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "GatherBlockQuantized"), None)
    if gather is None:
        return False
    vocab, hidden = inits[gather.input[0]].dims
    head = next((n for n in graph.node if n.op_type == "MatMulNBits"
                 and _attrs(n)["N"] == vocab and _attrs(n)["K"] == hidden), None)
    if head is None or len(head.input) > 3:  # zero points: not the gather's implicit-8 convention
        return False
    weights, scales = inits[head.input[1]], inits[head.input[2]]
    blocks = weights.dims[1]
    block = _attrs(head)["block_size"]
    shared_scales = numpy_helper.from_array(numpy_helper.to_array(scales).reshape(vocab, blocks, 1),
                                            f"{scales.name}_gather")
    for name in gather.input[0], gather.input[2]:
        graph.initializer.remove(inits[name])
    graph.initializer.append(shared_scales)
    rows = f"{gather.output[0]}_blocks"
    shape = numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), f"{gather.output[0]}_shape")
    graph.initializer.append(shape)
    new_gather = helper.make_node("GatherBlockQuantized", [weights.name, gather.input[1], shared_scales.name], [rows],
                                  name=gather.name, domain="com.microsoft", gather_axis=0, quantize_axis=2,
                                  block_size=block, bits=4)
    reshape = helper.make_node("Reshape", [rows, shape.name], [gather.output[0]], name=f"{gather.name}_reshape")
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    graph.node.insert(index, reshape)
    graph.node.insert(index, new_gather)
    return True


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


QUANTIZERS = {"fp32": _copy_fp32, "fp16": _fp16, "int8": _int8, "int4": _int4}
DEFAULT_QUANT = "int4"


def _is_large(path: Path) -> bool:
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}.onnx*")) > PROTOBUF_LIMIT


def save_model(model, dest: Path) -> None:
    """Save `model`, moving its weights to `<name>.onnx_data` when protobuf's 2 GB limit requires it."""
    import onnx

    large = model.ByteSize() > PROTOBUF_LIMIT if _all_inline(model) else True
    onnx.save_model(model, str(dest), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{dest.name}_data" if large else None, size_threshold=1024)


def _all_inline(model) -> bool:
    from onnx.external_data_helper import uses_external_data

    return not any(uses_external_data(t) for t in model.graph.initializer)


class _quiet:
    """Silence the quantizers' chatter (every node; opset upgrade notes) for the duration of a block."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n if n != "root" else None) for n in names]
        self.levels: list[int] = []

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)

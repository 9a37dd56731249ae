"""Hugging Face checkpoint -> self-contained ONNX folder for ONNX Runtime (and onnxruntime-genai).

    edgetts export ./my-model --format onnx --quant int4 --out my-model-onnx

Steps: (optionally) cut the checkpoint to its first K layers, export the graph with KV cache through
optimum-onnx (offline), quantize with ONNX Runtime's tools (`onnx_quant`), copy the tokenizer and
config, write `genai_config.json` (`onnx_genai`), measure parity against the torch reference, and
write `manifest.json`. Everything is written to a temporary folder that is renamed at the end.

The folder holds: model.onnx (+ model.onnx_data over 2 GB), config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, genai_config.json, manifest.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from edgetts.errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from edgetts.export import ExportReport
from edgetts.export.atomic import atomic_output
from edgetts.export.onnx_quant import QuantSpec, quantize
from edgetts.export.source import resolve_model

MODEL_FILE = "model.onnx"
# model_type -> onnxruntime-genai model type. Each is a decoder optimum exports with a KV cache and
# whose tiny version is tested for parity (tests/test_onnx.py walks this table).
ARCHS = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "qwen3": "qwen3"}
SIDE_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja"]
PARITY_STEPS = 32


def export_onnx(model: str | Path, out: Path, quant: str | None = None, layers: int | None = None,
                overwrite: bool = False, progress: bool = True, parity_steps: int = PARITY_STEPS) -> ExportReport:
    """Export `model` to the ONNX folder `out`; see the module docstring."""
    start = time.perf_counter()
    spec = QuantSpec.parse(quant)
    model = resolve_model(model)
    config = load_config(model)
    check_layers(layers, config.num_hidden_layers)
    spec = dataclasses.replace(spec, tied=bool(getattr(config, "tie_word_embeddings", False)))
    steps = _Progress(progress, total=5 if parity_steps else 4)
    with atomic_output(out, is_dir=True, overwrite=overwrite) as folder:
        stage = folder / ".stage"
        source = truncated_checkpoint(model, layers, stage / "hf") if layers else model
        steps(f"exporting {config.model_type} graph with KV cache (optimum)")
        fp32 = export_graph(source, stage / "fp32")
        params = count_parameters(fp32 / MODEL_FILE, config)
        steps(f"quantizing to {spec.name}")
        quantize(fp32 / MODEL_FILE, folder / MODEL_FILE, spec)
        steps("writing tokenizer, config and genai_config.json")
        copy_side_files(fp32, folder)
        shutil.rmtree(fp32)
        from edgetts.export.onnx_genai import write_genai_config

        write_genai_config(folder)
        parity = {}
        if parity_steps:
            steps(f"checking parity against torch ({parity_steps} greedy steps)")
            from edgetts.export.onnx_parity import measure_parity

            parity = measure_parity(source, folder, parity_steps)  # a cut checkpoint is its own reference
        shutil.rmtree(stage)
        manifest = build_manifest(model, config, spec, layers, parity, folder, params)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        steps("done")
    return ExportReport(path=Path(out), format="onnx", quant=spec.name, size_bytes=manifest["size_bytes"],
                        seconds=time.perf_counter() - start, bits_per_weight=manifest["bits_per_weight"],
                        layers=layers, parity=parity)


def load_config(model: str | Path):
    """The checkpoint's transformers config; fails at once for an architecture we cannot export."""
    from transformers import AutoConfig

    path = resolve_model(model)
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no config.json; pass a Hugging Face checkpoint folder")
    config = AutoConfig.from_pretrained(str(path))
    if config.model_type not in ARCHS:
        raise UnsupportedModelError(f"ONNX export does not support the {config.model_type!r} architecture; "
                                    f"supported: {', '.join(sorted(ARCHS))}")
    return config


def check_layers(layers: int | None, n_layers: int) -> None:
    if layers is not None and not 1 <= layers <= n_layers:
        raise ConfigError(f"--layers {layers} is invalid: this model has {n_layers} layers; pick 1..{n_layers}")


def truncated_checkpoint(model: str | Path, layers: int, folder: Path) -> Path:
    """The first `layers` decoder layers + final norm + LM head, saved as its own HF checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model))
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding window...) follow the cut
        config.layer_types = config.layer_types[:layers]
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were not used": the dropped layers, on purpose
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(model), config=config, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    hf.save_pretrained(folder)
    copy_side_files(Path(model), folder, skip=("config.json",))
    return folder


def export_graph(source: Path, folder: Path) -> Path:
    """optimum-onnx's text-generation-with-past export, offline, without its own validation pass."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side control flow, expected here
        main_export(str(source), output=folder, task="text-generation-with-past", do_validation=False,
                    local_files_only=True)
    return folder


def copy_side_files(src: Path, dest: Path, skip: tuple[str, ...] = ()) -> None:
    for name in SIDE_FILES:
        if name not in skip and (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dest / name)


def build_manifest(model, config, spec: QuantSpec, layers: int | None, parity: dict, folder: Path,
                   params: int) -> dict:
    from edgetts import __version__

    size = sum(p.stat().st_size for p in folder.glob(f"{MODEL_FILE}*"))
    return {
        "format": "onnx",
        "source": str(model),
        "arch": config.model_type,
        "quant": spec.describe(),
        "edgetts_version": __version__,
        "onnxruntime_version": _version("onnxruntime"),
        "optimum_onnx_version": _version("optimum-onnx"),
        "n_layers": layers or config.num_hidden_layers,
        "source_n_layers": config.num_hidden_layers,
        "early_exit_layers": layers,
        "files": sorted(p.name for p in folder.iterdir() if p.is_file()),
        "size_bytes": size,
        "parameters": params,
        "bits_per_weight": round(8 * size / params, 3) if params else None,
        "tokenizer_sha256": _sha256(folder / "tokenizer.json"),
        "parity": parity,
    }


def count_parameters(path: Path, config) -> int:
    """Parameters of the checkpoint, from the fp32 graph's weight shapes (a tied LM head counted once).

    The denominator of bits per weight: the export unties the head into its own MatMul weight.
    """
    import math

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    total = sum(math.prod(t.dims) for t in graph.initializer if len(t.dims) >= 1 and t.data_type == onnx.TensorProto.FLOAT)
    if getattr(config, "tie_word_embeddings", False):
        total -= config.vocab_size * config.hidden_size
    return total


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str | None:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class _Progress:
    """One line per step on stderr ('[2/5] quantizing to int4'), silent when progress is off."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self.n = enabled, total, 0
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        import sys

        if message == "done":
            print(f"      finished in {time.perf_counter() - self.start:.1f}s", file=sys.stderr)
            return
        self.n += 1
        print(f"[{self.n}/{self.total}] {message}", file=sys.stderr, flush=True)

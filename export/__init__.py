"""Exporters: Hugging Face checkpoint -> GGUF (llama.cpp) and ONNX (ONNX Runtime), with parity checks.

Installed as `edgetts.export`. Every exporter writes through `atomic_output`, so a failed or
interrupted export never leaves a half-written artifact at the destination.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetts.errors import choice_error
from edgetts.export.atomic import atomic_output

# format -> "module:function"; each function takes export()'s keyword arguments.
FORMATS = {
    "gguf": "edgetts.export.gguf:export_gguf",
    "onnx": "edgetts.export.onnx:export_onnx",
}


@dataclass
class ExportReport:
    """What an export produced, for the CLI, the manifest and benchmarks."""

    path: Path
    format: str
    quant: str
    size_bytes: int
    seconds: float
    bits_per_weight: float | None = None
    layers: int | None = None  # set for an early-exit (first-K-layers) export
    parity: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def export(model: str | Path, out: str | Path, format: str = "gguf", quant: str | None = None,
           layers: int | None = None, overwrite: bool = False, progress: bool = True) -> ExportReport:
    """Export `model` (a local Hugging Face folder, or a hub id when online) to `out`."""
    if format not in FORMATS:
        raise choice_error("format", format, FORMATS)
    module_name, function = FORMATS[format].split(":")
    exporter = getattr(importlib.import_module(module_name), function)
    return exporter(model=model, out=Path(out), quant=quant, layers=layers, overwrite=overwrite, progress=progress)


__all__ = ["ExportReport", "atomic_output", "export", "FORMATS"]

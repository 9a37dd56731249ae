"""The built-in models: a small arithmetic family that ships with edgetts (no download, ever).

- `generator`: the default model of `edgetts run`, trained with early-exit losses (LayerSkip-style).
- `draft`: a smaller model with the same tokenizer, for speculative decoding.
- `verifier`: reads `<prompt><solution>\\nCorrect?` and answers ` yes`/` no`; its score is P(yes).

`path(name)` is the Hugging Face folder in the package; `artifact(name, format)` exports it on demand
(GGUF or ONNX) into the user's cache and returns the cached file/folder. See README.md here for the
model card, and `edgetts.arithmetic` for the task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgetts.errors import ModelNotFoundError, choice_error
from edgetts.profile import cache_dir  # one cache directory for profiles, calibrations and exports

MODELS_DIR = Path(__file__).resolve().parent
NAMES = ("generator", "draft", "verifier")
DEFAULT = "generator"
VERIFIER_SUFFIX = "\nCorrect?"
VERIFIER_WORDS = (" yes", " no")
ARTIFACT_SUFFIX = {"gguf": ".gguf", "onnx": ""}  # onnx exports are folders
# Models this small lose accuracy at 4 bits and gain nothing in speed or size worth having.
DEFAULT_QUANT = {"gguf": "q8_0", "onnx": "fp32"}
ROLES = {
    "generator": "answers arithmetic with worked steps; the default for `edgetts run`",
    "draft": "small drafter for speculative decoding of the generator",
    "verifier": "scores a candidate solution: P(' yes') after '\\nCorrect?'",
}


@dataclass(frozen=True)
class BuiltIn:
    name: str
    path: Path
    role: str
    parameters: int | None
    size_bytes: int
    training: dict

    def to_dict(self) -> dict:
        return dict(name=self.name, path=str(self.path), role=self.role, parameters=self.parameters,
                    size_bytes=self.size_bytes, training=self.training)


def path(name: str = DEFAULT) -> Path:
    """The Hugging Face folder of built-in `name`."""
    if name not in NAMES:
        raise choice_error("built-in model", name, NAMES)
    folder = MODELS_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise ModelNotFoundError(
            f"built-in model {name!r} has no weights at {folder}; train it with "
            f"`python -m edgetts.embedded.train {name}` or reinstall edgetts")
    return folder


def info(name: str) -> BuiltIn:
    folder = path(name)
    training_file = folder / "training.json"
    training = json.loads(training_file.read_text()) if training_file.is_file() else {}
    return BuiltIn(name, folder, ROLES[name], training.get("parameters"),
                   (folder / "model.safetensors").stat().st_size, training)


def list_models() -> list[BuiltIn]:
    """Every built-in that has weights in this installation."""
    return [info(n) for n in NAMES if (MODELS_DIR / n / "model.safetensors").is_file()]


def model_card() -> str:
    return (MODELS_DIR / "README.md").read_text()


def artifact(name: str = DEFAULT, format: str = "gguf", quant: str | None = None) -> Path:
    """Built-in `name` as a `format` artifact, exported once into the cache and reused after.

    Falls back to the Hugging Face folder (which the torch engine runs) when this installation has
    no exporter for `format`.
    """
    import edgetts.export as exporters

    if format not in ARTIFACT_SUFFIX:
        raise choice_error("format", format, ARTIFACT_SUFFIX)
    source = path(name)
    if not has_exporter(format):
        return source
    quant = quant or DEFAULT_QUANT[format]
    weights = (source / "model.safetensors").stat()
    stamp = f"{weights.st_size}-{int(weights.st_mtime)}"  # retrained weights get a fresh export
    out = cache_dir() / "embedded" / f"{name}-{stamp}-{quant}{ARTIFACT_SUFFIX[format]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        exporters.export(source, out, format=format, quant=quant, progress=False)
    return out


def has_exporter(format: str) -> bool:
    """Whether this installation has the exporter module for `format` (GGUF and ONNX land separately)."""
    import importlib.util

    from edgetts.export import FORMATS

    return importlib.util.find_spec(FORMATS[format].split(":")[0]) is not None


def table() -> list[str]:
    """One line per built-in, for `edgetts models`."""
    lines = []
    for m in list_models():
        params = f"{m.parameters / 1e6:.2f} M" if m.parameters else "?"
        lines.append(f"{m.name:<10} {params:>8} {m.size_bytes / 1e6:5.1f} MB  {m.role}\n{'':<10} {m.path}")
    return lines


__all__ = ["ARTIFACT_SUFFIX", "BuiltIn", "DEFAULT", "MODELS_DIR", "NAMES", "VERIFIER_SUFFIX", "VERIFIER_WORDS",
           "artifact", "cache_dir", "has_exporter", "info", "list_models", "model_card", "path", "table"]

"""Runtime adapters, one module per engine, and the registry that picks one for an artifact.

Adapters are thin: they translate the `Engine` contract to their runtime's API and nothing more.
Each entry names its module lazily, so listing runtimes imports no engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from edgetts.errors import ModelNotFoundError, RuntimeUnavailableError, UnsupportedModelError, choice_error


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    target: str  # "module:Class"
    package: str  # the pip distribution that provides the engine
    install: str  # the command that installs it

    def load_class(self):
        module_name, class_name = self.target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise RuntimeUnavailableError(
                f"the {self.name} runtime needs {self.package}, which failed to import ({exc}); "
                f"install it with: {self.install}"
            ) from exc
        return getattr(module, class_name)


RUNTIMES: dict[str, RuntimeSpec] = {}
ALIASES: dict[str, str] = {}


def register(spec: RuntimeSpec, *aliases: str) -> None:
    """Add a runtime (built-ins and plugins go through the same door)."""
    RUNTIMES[spec.name] = spec
    ALIASES.update({alias: spec.name for alias in aliases})


register(
    RuntimeSpec("llama.cpp", "edgetts.runtimes.llamacpp:LlamaCppEngine", "llama-cpp-python",
                "pip install llama-cpp-python -c constraints.txt"),
    "llamacpp", "llama_cpp", "gguf",
)
register(
    RuntimeSpec("onnxruntime", "edgetts.runtimes.onnxruntime:OnnxEngine", "onnxruntime",
                "pip install onnxruntime -c constraints.txt"),
    "ort", "onnx",
)
register(
    RuntimeSpec("torch", "edgetts.runtimes.torch:TorchEngine", "torch + transformers",
                "pip install 'edgetts[export]' -c constraints.txt"),
    "transformers", "hf",
)


def resolve(name: str) -> RuntimeSpec:
    key = ALIASES.get(name, name)
    if key not in RUNTIMES:
        raise choice_error("runtime", name, RUNTIMES)
    return RUNTIMES[key]


def detect_runtime(path: str | Path) -> str:
    """The runtime an artifact is for: .gguf -> llama.cpp, folder with .onnx -> onnxruntime, HF folder -> torch."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist; pass a .gguf file, an ONNX folder or a Hugging Face folder")
    if path.is_file():
        if path.suffix == ".gguf":
            return "llama.cpp"
        if path.suffix == ".onnx":
            return "onnxruntime"
        raise UnsupportedModelError(f"{path.name}: edgetts loads .gguf files and model folders, not {path.suffix or 'this'} files")
    if any(path.glob("*.onnx")):
        return "onnxruntime"
    if (path / "config.json").is_file():
        return "torch"
    raise UnsupportedModelError(
        f"{path} holds no model edgetts recognises: expected *.onnx (ONNX Runtime) or config.json "
        "with weights (Hugging Face); export one with `edgetts export`"
    )


def load(path: str | Path, runtime: str | None = None, device: str | None = None, **options):
    """Open `path` as an Engine, with the runtime detected from the artifact unless named."""
    spec = resolve(runtime or detect_runtime(path))
    engine_class = spec.load_class()
    return engine_class(Path(path), device=device, **options)

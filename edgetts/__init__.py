"""edgetts: small language models on edge devices that answer better inside a latency budget.

The core imports nothing heavy: engines (llama.cpp, ONNX Runtime, torch) are imported only
when a model is loaded with them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from edgetts.engine import Engine
from edgetts.errors import EdgettsError
from edgetts.types import EngineInfo, SamplingParams

__all__ = ["Engine", "EngineInfo", "EdgettsError", "SamplingParams", "load", "solve", "__version__"]


def load(path, runtime: str | None = None, device: str | None = None, **options) -> Engine:
    """Open a model artifact as an `Engine`; see `edgetts.runtimes.load`."""
    from edgetts.runtimes import load as _load

    return _load(path, runtime=runtime, device=device, **options)


def solve(prompt: str, budget: float = 2.0, model=None, **options) -> dict:
    """Answer `prompt` within `budget` seconds, planning samples and verifiers from measured latency.

    With no `model`, the embedded arithmetic family is used; see `edgetts.session.solve`.
    """
    from edgetts.session import solve as _solve

    return _solve(prompt, budget=budget, model=model, **options)

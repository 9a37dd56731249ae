"""llama-cpp-python's low-level bindings, imported once, with llama.cpp's own log silenced.

`verbose=False` on the high-level class does not silence everything llama.cpp prints; a
no-op `llama_log_set` callback does. The callback object must outlive every call, so it is
kept at module level.
"""

from __future__ import annotations

import ctypes
import os

from edgetts.errors import ConfigError, RuntimeUnavailableError

_state: dict = {}


def llama_cpp():
    """The `llama_cpp` module with the backend initialised and logging silenced (idempotent)."""
    if "lib" not in _state:
        try:
            import llama_cpp as lib
        except ImportError as exc:
            raise RuntimeUnavailableError(
                f"the llama.cpp runtime needs llama-cpp-python ({exc}); "
                "install it with: pip install llama-cpp-python -c constraints.txt"
            ) from exc
        _state["log"] = lib.llama_log_callback(_ignore_log)
        if not os.environ.get("EDGETTS_LLAMA_LOG"):  # set it to see llama.cpp's own log
            lib.llama_log_set(_state["log"], ctypes.c_void_p(0))
        lib.llama_backend_init()
        _state["lib"] = lib
    return _state["lib"]


def _ignore_log(level, text, user_data) -> None:
    return None


def quantize(src: str, dst: str, file_type: int, threads: int | None = None) -> None:
    """Requantize GGUF `src` into `dst` with llama.cpp's own quantizer (in-process)."""
    lib = llama_cpp()
    params = lib.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = threads or default_threads()
    if lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise ConfigError(f"llama.cpp could not quantize {src} to file type {file_type}; "
                          "run with EDGETTS_LLAMA_LOG=1 to see its log")


def default_threads() -> int:
    """Physical cores this process may use (llama.cpp gains nothing from hyper-threads)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or 1
    except ImportError:
        physical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, usable))

"""`edgetts doctor`: what this machine is and which engines it can run, with fixes for what is missing."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys

# (import name, distribution, what it is for, install command)
COMPONENTS = [
    ("llama_cpp", "llama-cpp-python", "GGUF models (llama.cpp engine)", "pip install llama-cpp-python -c constraints.txt"),
    ("onnxruntime", "onnxruntime", "ONNX models (ONNX Runtime engine)", "pip install onnxruntime -c constraints.txt"),
    ("onnxruntime_genai", "onnxruntime-genai", "speed anchor for the ONNX path", "pip install 'edgetts[genai]' -c constraints.txt"),
    ("torch", "torch", "export and the reference engine", "pip install 'edgetts[export]' -c constraints.txt"),
    ("transformers", "transformers", "reading Hugging Face checkpoints", "pip install 'edgetts[export]' -c constraints.txt"),
    ("optimum.exporters.onnx", "optimum-onnx", "ONNX export", "pip install 'edgetts[export]' -c constraints.txt"),
    ("gguf", "gguf", "GGUF export", "pip install gguf -c constraints.txt"),
    ("tokenizers", "tokenizers", "tokenization", "pip install tokenizers -c constraints.txt"),
]
X86_FEATURES = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"]
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "sve": "sve", "i8mm": "i8mm", "fphp": "fp16"}


def report() -> dict:
    """Everything doctor knows, as plain data (the --json output)."""
    from edgetts import __version__

    return {
        "edgetts": __version__,
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": cpu_info(),
        "memory": memory_info(),
        "components": [component_status(*c) for c in COMPONENTS],
        "llama_cpp": llama_cpp_info(),
        "onnxruntime": onnxruntime_info(),
    }


def cpu_info() -> dict:
    import psutil

    model, flags = _proc_cpuinfo()
    if platform.machine().lower() in ("arm64", "aarch64") or "asimd" in flags:
        features = [name for flag, name in ARM_FEATURES.items() if flag in flags]
        if platform.system() == "Darwin":
            features.append("neon")  # every Apple-silicon core has it; /proc/cpuinfo does not exist there
    else:
        features = [f for f in X86_FEATURES if f in flags]
    return {
        "model": model or platform.processor() or "unknown",
        "features": features,
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def _proc_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def memory_info() -> dict:
    import psutil

    mem = psutil.virtual_memory()
    return {"total_gb": round(mem.total / 1e9, 1), "available_gb": round(mem.available / 1e9, 1)}


def component_status(module: str, dist: str, purpose: str, install: str) -> dict:
    status = {"name": dist, "purpose": purpose, "version": None, "ok": False}
    try:
        status["version"] = importlib.metadata.version(dist)
        importlib.import_module(module)
        status["ok"] = True
    except Exception as exc:  # any failure to import means "not usable here"; say why
        status["error"] = f"{type(exc).__name__}: {exc}".strip()
        status["fix"] = install
    return status


def llama_cpp_info() -> dict | None:
    try:
        import llama_cpp
    except Exception:
        return None
    return {
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
    }


def onnxruntime_info() -> dict | None:
    try:
        import onnxruntime as ort
    except Exception:
        return None
    from edgetts.runtimes.providers import device_table

    info = {"providers": ort.get_available_providers(), "default_device": ort.get_device(),
            "devices_by_name": device_table(ort.get_available_providers())}
    if hasattr(ort, "get_ep_devices"):  # device discovery, onnxruntime >= 1.22
        info["devices"] = [
            {"provider": d.ep_name, "type": str(d.device.type).rsplit(".", 1)[-1], "vendor": d.device.vendor}
            for d in ort.get_ep_devices()
        ]
    return info

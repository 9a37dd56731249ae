"""Device names -> ONNX Runtime execution providers, with an ordered fallback that is always reported.

    device     tried in order (CPU last)                 ships in
    auto       the accelerators this machine has, best first, then CPU
    cpu        CPUExecutionProvider only (nothing else is tried)
    cuda       CUDA                                      onnxruntime-gpu
    tensorrt   TensorRT, then CUDA                       onnxruntime-gpu
    coreml     CoreML                                    onnxruntime (macOS wheels)
    nnapi      NNAPI                                     onnxruntime-android
    qnn        QNN (Qualcomm NPU)                        onnxruntime-qnn
    openvino   OpenVINO (Intel CPU/GPU/NPU)              onnxruntime-openvino
    dml        DirectML (any Windows GPU)                onnxruntime-directml
    xnnpack    XNNPACK (mobile CPUs)                     onnxruntime-android / -mobile builds

A provider that is not compiled into the installed onnxruntime, or that ONNX Runtime drops while
creating the session (no driver, no device), is skipped with its reason and a warning; the report
says which provider the session actually runs on and what hardware ONNX Runtime's device discovery
(`get_ep_devices`, onnxruntime >= 1.22) found. `get_available_providers` alone lists compiled
providers, not hardware, so the session itself is the final check.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from edgetts.errors import ConfigError, choice_error

CPU = "CPUExecutionProvider"

# device -> (providers to try in order, the package that ships the first one)
DEVICES: dict[str, tuple[tuple[str, ...], str]] = {
    "cpu": ((CPU,), "onnxruntime"),
    "cuda": (("CUDAExecutionProvider", CPU), "onnxruntime-gpu"),
    "tensorrt": (("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU), "onnxruntime-gpu (and TensorRT)"),
    "coreml": (("CoreMLExecutionProvider", CPU), "onnxruntime on macOS"),
    "nnapi": (("NnapiExecutionProvider", CPU), "onnxruntime-android"),
    "qnn": (("QNNExecutionProvider", CPU), "onnxruntime-qnn"),
    "openvino": (("OpenVINOExecutionProvider", CPU), "onnxruntime-openvino"),
    "dml": (("DmlExecutionProvider", CPU), "onnxruntime-directml"),
    "xnnpack": (("XnnpackExecutionProvider", CPU), "an onnxruntime mobile build"),
}
# What `auto` prefers, best first. TensorRT (minutes of engine building), NNAPI (often slower than the
# CPU, deprecated in Android 15) and XNNPACK (a CPU provider) are only used when asked for by name.
AUTO_ORDER = ("CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
              "QNNExecutionProvider", "OpenVINOExecutionProvider")


@dataclass
class ProviderReport:
    """What was asked for, what was tried and why it was skipped, and what the session runs on."""

    requested: str
    device_id: int = 0
    used: str = CPU
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (provider, reason)
    session_providers: list[str] = field(default_factory=list)
    devices: dict[str, list[str]] | None = None  # provider -> hardware found by get_ep_devices (ORT >= 1.22)
    options: dict[str, dict] = field(default_factory=dict)  # provider -> the options it was given

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)

    def summary(self) -> str:
        why = "; ".join(f"{p}: {r}" for p, r in self.skipped)
        return f"device={self.requested} runs on {self.used}" + (f" (skipped {why})" if why else "")

    def to_dict(self) -> dict:
        return {"requested": self.requested, "device_id": self.device_id, "used": self.used, "skipped": [list(s) for s in self.skipped],
                "session_providers": self.session_providers, "devices": self.devices}


INDEXED = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"}  # take a device_id


def parse_device(device: str | None) -> tuple[str, int]:
    """"cuda:1" -> ("cuda", 1); "cpu" -> ("cpu", 0); None -> ("auto", 0)."""
    name, _, index = (device or "auto").lower().partition(":")
    if index and not index.isdigit():
        raise ConfigError(f"device {device!r} is invalid: write NAME or NAME:INDEX, e.g. cuda:1")
    return name, int(index or 0)


def candidates(device: str, available: list[str]) -> list[str]:
    """Providers to try for `device`, best first, ending with the CPU."""
    if device == "auto":
        return [p for p in AUTO_ORDER if p in available] + [CPU]
    if device not in DEVICES:
        raise choice_error("device", device, [*DEVICES, "auto"])
    return list(DEVICES[device][0])


def open_session(model_path: str, device: str | None, session_options=None,
                 provider_options: dict | None = None, ort=None):
    """An InferenceSession on the best provider for `device`, and the report of how it was chosen.

    `provider_options` is either one dict for the requested device's first provider (e.g.
    `{"backend_path": "QnnHtp.dll"}` for qnn) or a dict keyed by provider name.
    """
    if ort is None:
        import onnxruntime as ort
    device, index = parse_device(device)
    report = ProviderReport(requested=device, device_id=index)
    order = candidates(device, [] if device == "cpu" else ort.get_available_providers())
    if device != "cpu":
        report.devices = ep_devices(ort)
    options = report.options = _options_by_provider(order, provider_options)
    if index and order[0] in INDEXED:  # cuda:1 -> device_id 1, unless the options already say
        options[order[0]] = {"device_id": str(index), **options.get(order[0], {})}
    usable = [p for p in order if _usable(p, ort, report, device)]
    session = ort.InferenceSession(model_path, sess_options=session_options, providers=usable,
                                   provider_options=[options.get(p, {}) for p in usable])
    report.session_providers = list(session.get_providers())
    report.used = next((p for p in usable if p in report.session_providers), CPU)
    for p in usable[: usable.index(report.used)]:  # registered but dropped by ONNX Runtime at session creation
        report.skipped.append((p, "onnxruntime could not initialise it (driver or library missing?)"))
    if report.fell_back:
        warnings.warn(f"ONNX Runtime: {report.summary()}", RuntimeWarning, stacklevel=3)
    return session, report


def device_table(available: list[str]) -> dict[str, dict]:
    """For `edgetts doctor`: per device name, the provider it maps to and where it would run here."""
    table = {}
    for device, (order, package) in DEVICES.items():
        runs_on = next(p for p in order if p in available or p == CPU)
        entry = {"provider": order[0], "runs_on": runs_on}
        if runs_on != order[0]:
            entry["install"] = package
        table[device] = entry
    return table


def _usable(provider: str, ort, report: ProviderReport, device: str) -> bool:
    if provider == CPU or report.requested == "cpu":
        return True
    if provider not in ort.get_available_providers():
        package = DEVICES.get(device, ((), "the matching onnxruntime build"))[1]
        report.skipped.append((provider, f"not in this onnxruntime build; install {package}"))
        return False
    return True


def ep_devices(ort) -> dict[str, list[str]] | None:
    """provider -> hardware device types it can use, from ONNX Runtime's device discovery (>= 1.22)."""
    if not hasattr(ort, "get_ep_devices"):
        return None
    found: dict[str, list[str]] = {}
    for d in ort.get_ep_devices():
        found.setdefault(d.ep_name, []).append(str(d.device.type).rsplit(".", 1)[-1])
    return found


def _options_by_provider(order: list[str], provider_options: dict | None) -> dict[str, dict]:
    if not provider_options:
        return {}
    if all(isinstance(v, dict) for v in provider_options.values()):
        unknown = set(provider_options) - {p for ps, _ in DEVICES.values() for p in ps}
        if unknown:
            raise ConfigError(f"provider_options names unknown providers {sorted(unknown)}; "
                              "key them by provider name, e.g. {'QNNExecutionProvider': {...}}")
        return dict(provider_options)
    first = order[0]
    return {first: {k: str(v) for k, v in provider_options.items()}}


def node_placement(model_path: str, providers: list[str], feeds: dict, provider_options: list[dict] | None = None,
                   ort=None) -> dict[str, int]:
    """Nodes per provider over one run of `feeds`, from ONNX Runtime's profiler.

    An accelerator can accept a session yet take no nodes (CoreML rejects dims > 16384, for one),
    so "the session lists CoreML" is not "the model runs on CoreML"; this counts where nodes ran.
    """
    import json
    import os

    if ort is None:
        import onnxruntime as ort
    options = ort.SessionOptions()
    options.enable_profiling = True
    session = ort.InferenceSession(model_path, options, providers=providers, provider_options=provider_options)
    session.run(None, feeds)
    trace = session.end_profiling()
    counts: dict[str, int] = {}
    try:
        with open(trace, encoding="utf-8") as f:
            events = json.load(f)
    finally:
        os.remove(trace)
    for event in events:
        provider = event.get("args", {}).get("provider")
        if event.get("cat") == "Node" and provider and event["name"].endswith("_kernel_time"):
            counts[provider] = counts.get(provider, 0) + 1
    return counts

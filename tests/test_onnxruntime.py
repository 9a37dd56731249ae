"""ONNX Runtime engine: execution-provider choice and fallback, and the KV bookkeeping behind batching.

The Engine contract itself is checked by tests/test_conformance.py; these tests cover what is
specific to this engine.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edgetts.errors import ConfigError  # noqa: E402
from edgetts.runtimes.providers import CPU, DEVICES, open_session  # noqa: E402


class FakeOrt:
    """Stands in for the onnxruntime module: which providers exist, and which ones a session keeps."""

    def __init__(self, available=(CPU,), fails=()):
        self.available, self.fails = list(available), set(fails)
        self.calls: list[tuple] = []

    def get_available_providers(self):
        self.calls.append(("get_available_providers",))
        return self.available

    def InferenceSession(self, path, sess_options=None, providers=(), provider_options=()):  # noqa: N802
        self.calls.append(("InferenceSession", list(providers), list(provider_options)))
        kept = [p for p in providers if p not in self.fails]
        return type("Session", (), {"get_providers": lambda _: kept})()


def test_cpu_tries_nothing_else():
    ort = FakeOrt(available=["CUDAExecutionProvider", CPU])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = open_session("m.onnx", "cpu", ort=ort)
    assert ort.calls == [("InferenceSession", [CPU], [{}])]
    assert report.used == CPU and not report.fell_back


@pytest.mark.parametrize("device", sorted(set(DEVICES) - {"cpu"}))
def test_a_provider_not_installed_falls_back_with_a_warning(device):
    ort = FakeOrt(available=[CPU])
    with pytest.warns(RuntimeWarning, match=f"device={device} runs on CPUExecutionProvider"):
        _, report = open_session("m.onnx", device, ort=ort)
    assert report.used == CPU
    assert [p for p, _ in report.skipped] == list(DEVICES[device][0][:-1])
    assert DEVICES[device][1] in report.skipped[0][1]  # the reason names the package to install
    assert ort.calls[-1] == ("InferenceSession", [CPU], [{}])


def test_a_provider_that_fails_to_initialise_is_reported():
    ort = FakeOrt(available=["CUDAExecutionProvider", CPU], fails={"CUDAExecutionProvider"})
    with pytest.warns(RuntimeWarning, match="could not initialise"):
        _, report = open_session("m.onnx", "cuda", ort=ort)
    assert report.used == CPU and report.skipped[0][0] == "CUDAExecutionProvider"


def test_provider_options_pass_through():
    ort = FakeOrt(available=["QNNExecutionProvider", CPU])
    _, report = open_session("m.onnx", "qnn", provider_options={"backend_path": "QnnHtp.dll"}, ort=ort)
    assert ort.calls[-1] == ("InferenceSession", ["QNNExecutionProvider", CPU], [{"backend_path": "QnnHtp.dll"}, {}])
    assert report.used == "QNNExecutionProvider" and not report.fell_back
    keyed = {"TensorrtExecutionProvider": {"trt_engine_cache_path": "/tmp/trt"}, "CUDAExecutionProvider": {"device_id": 0}}
    ort = FakeOrt(available=["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU])
    open_session("m.onnx", "tensorrt", provider_options=keyed, ort=ort)
    assert ort.calls[-1][2] == [keyed["TensorrtExecutionProvider"], keyed["CUDAExecutionProvider"], {}]
    with pytest.raises(ConfigError, match="unknown providers"):
        open_session("m.onnx", "cuda", provider_options={"CudaProvider": {}}, ort=ort)


def test_an_indexed_device_selects_that_gpu():
    ort = FakeOrt(available=["CUDAExecutionProvider", CPU])
    _, report = open_session("m.onnx", "cuda:1", ort=ort)
    assert ort.calls[-1] == ("InferenceSession", ["CUDAExecutionProvider", CPU], [{"device_id": "1"}, {}])
    assert report.device_id == 1 and report.used == "CUDAExecutionProvider"
    with pytest.raises(ConfigError, match="NAME:INDEX"):
        open_session("m.onnx", "cuda:first", ort=ort)


def test_auto_takes_the_best_accelerator_present_and_skips_slow_ones():
    ort = FakeOrt(available=["NnapiExecutionProvider", "DmlExecutionProvider", "CUDAExecutionProvider", CPU])
    _, report = open_session("m.onnx", "auto", ort=ort)
    assert ort.calls[-1][1] == ["CUDAExecutionProvider", "DmlExecutionProvider", CPU]
    assert report.used == "CUDAExecutionProvider"


def test_unknown_device_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid devices: auto, coreml, cpu, cuda, dml"):
        open_session("m.onnx", "tpu", ort=FakeOrt())


# --- the real engine ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tiny_model):
    from edgetts.testing import tiny_onnx

    return tiny_onnx(tiny_model("qwen2"))


def load(folder, **options):
    from edgetts.runtimes.onnxruntime import OnnxEngine

    return OnnxEngine(folder, **options)


def test_info_reports_where_the_session_runs(folder):
    with load(folder, device="cpu") as engine:
        assert engine.info.device == CPU and engine.info.runtime == "onnxruntime"
        assert engine.info.extra["providers"]["session_providers"] == [CPU]
        assert engine.info.quant == "fp32" and not engine.info.gpu_offload


def test_a_real_missing_provider_falls_back_visibly(folder):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider: not in this onnxruntime build; install onnxruntime-gpu"):
        engine = load(folder, device="cuda")
    with engine:
        assert engine.info.device == CPU
        assert engine.info.extra["providers"]["skipped"][0][0] == "CUDAExecutionProvider"


def test_loads_through_the_registry(folder):
    import edgetts

    with edgetts.load(folder, device="cpu") as engine:
        assert engine.info.runtime == "onnxruntime"


def test_steady_batched_decoding_reuses_the_kv_in_place(folder, monkeypatch):
    from edgetts.runtimes import onnxruntime as engine_module

    with load(folder, device="cpu", n_seq_max=8) as engine:
        prompt = engine.tokenizer.encode("What is 2+3?")
        first = engine.eval(0, prompt)[-1]
        for dst in range(1, 4):
            engine.fork(0, dst)
        packs = []
        original = engine_module.OnnxEngine._pack
        monkeypatch.setattr(engine_module.OnnxEngine, "_pack", lambda self, seqs: packs.append(seqs) or original(self, seqs))
        tokens = {s: [int(np.argmax(first)) + s] for s in range(4)}  # four different continuations
        for _ in range(12):
            out = engine.eval_batch({s: t[-1:] for s, t in tokens.items()})
            for s in tokens:
                tokens[s].append(int(np.argmax(out[s][-1])))
        assert len(packs) == 1  # packed once after the forks, then fed back step after step
        for s, got in tokens.items():  # and each row still equals decoding that sequence alone
            engine.release(7)
            alone = engine.eval(7, prompt + got[:-1])
            assert [int(np.argmax(r)) for r in alone[len(prompt):]] == got[1:]


def test_ragged_speculative_rollback_inside_the_batch(folder):
    # Rows verify different numbers of draft tokens, then roll back different amounts:
    # right padding and masked-out columns must never leak into later steps.
    with load(folder, device="cpu", n_seq_max=8) as engine:
        a, b = [5, 6, 7, 8, 9], [20, 21, 22]
        engine.eval_batch({0: a, 1: b})
        engine.eval_batch({0: [30, 31, 32], 1: [40]})
        engine.truncate(0, 6)
        engine.truncate(1, 3)
        out = engine.eval_batch({0: [50, 51], 1: [60, 61, 62]})
        np.testing.assert_allclose(out[0], fresh(engine, a + [30, 50, 51])[-2:], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(out[1], fresh(engine, b + [60, 61, 62])[-3:], atol=1e-4, rtol=1e-4)


def test_masked_columns_are_compacted_away(folder):
    from edgetts.runtimes.onnxruntime import SLACK

    with load(folder, device="cpu", n_seq_max=4) as engine:
        engine.eval_batch({0: [1, 2, 3], 1: [4, 5]})
        for step in range(40):  # draft 4, keep 1: three dead columns per step
            engine.eval_batch({0: [7, 8, 9, 10], 1: [11, 12, 13, 14]})
            engine.truncate(0, engine.n_tokens(0) - 3)
            engine.truncate(1, engine.n_tokens(1) - 3)
        assert engine._resident.width <= max(engine.n_tokens(0), engine.n_tokens(1)) + SLACK + 4


def fresh(engine, tokens, seq=6):
    engine.release(seq)
    out = engine.eval(seq, tokens)
    engine.release(seq)
    return out


def test_node_placement_counts_nodes_per_provider(folder):
    with load(folder, device="cpu") as engine:
        counts = engine.node_placement()
    assert set(counts) == {CPU} and counts[CPU] > 10


def test_doctor_reports_where_each_device_name_would_run():
    from edgetts.doctor import onnxruntime_info
    from edgetts.runtimes.providers import device_table

    table = device_table(["CUDAExecutionProvider", CPU])
    assert table["cuda"] == {"provider": "CUDAExecutionProvider", "runs_on": "CUDAExecutionProvider"}
    assert table["tensorrt"]["runs_on"] == "CUDAExecutionProvider" and "install" in table["tensorrt"]
    assert table["qnn"] == {"provider": "QNNExecutionProvider", "runs_on": CPU, "install": "onnxruntime-qnn"}
    assert onnxruntime_info()["devices_by_name"]["cpu"]["runs_on"] == CPU

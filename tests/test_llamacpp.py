"""llama.cpp engine specifics beyond the conformance suite: file validation before llama.cpp,
batched forks, the prefill shortcut, options, the registry and a silent log."""

from __future__ import annotations

import numpy as np
import pytest

from edgetts.errors import ContextOverflowError, InvalidArtifactError, ModelNotFoundError

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def gguf_path(tiny_gguf):
    return tiny_gguf("qwen2", "f32")


def _engine(path, **options):
    from edgetts.runtimes.llamacpp import LlamaCppEngine

    return LlamaCppEngine(path, **{"n_seq_max": 8, "n_ctx": 256, **options})


def _corrupt(src, dst, edit) -> object:
    data = bytearray(src.read_bytes())
    dst.write_bytes(edit(data))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda d: b"GGML" + d[4:], "not a GGUF file"),
    (lambda d: d[:4] + (99).to_bytes(4, "little") + d[8:], "version 99"),
    (lambda d: d[: len(d) - 1000], "truncated"),
    (lambda d: d[:200], "truncated"),
    (lambda d: b"", "not a GGUF file|truncated"),
])
def test_invalid_files_are_refused_before_llama_cpp(gguf_path, tmp_path, edit, message):
    bad = _corrupt(gguf_path, tmp_path / "bad.gguf", edit)
    with pytest.raises(InvalidArtifactError, match=message):
        _engine(bad)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelNotFoundError, match="edgetts export"):
        _engine(tmp_path / "nope.gguf")


def test_registry_opens_gguf_with_this_engine(gguf_path):
    import edgetts
    from edgetts.runtimes.llamacpp import LlamaCppEngine

    with edgetts.load(gguf_path, n_ctx=128) as engine:
        assert isinstance(engine, LlamaCppEngine)
        assert isinstance(engine, edgetts.Engine)


def test_info_declares_what_the_build_and_file_are(gguf_path):
    import llama_cpp

    with _engine(gguf_path, n_threads=1, n_batch=64) as engine:
        info = engine.info
        assert (info.runtime, info.arch, info.quant, info.n_layers) == ("llama.cpp", "qwen2", "f32", 2)
        assert info.gpu_offload == bool(llama_cpp.llama_supports_gpu_offload())
        assert info.extra["n_threads"] == 1 and info.extra["n_batch"] == 64
        assert info.extra["bits_per_weight"] == pytest.approx(32.0)
        assert info.early_exit_layers is None


def test_gpu_request_on_a_cpu_build_fails_clearly(gguf_path):
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this build can offload to a GPU")
    from edgetts.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="CPU-only"):
        _engine(gguf_path, device="gpu")


def test_eight_forks_decode_in_one_batch_like_eight_separate_runs(gguf_path):
    prompt = list(range(20, 40))
    with _engine(gguf_path) as engine:
        engine.eval(0, prompt)
        for seq in range(1, 8):
            engine.fork(0, seq)
        steps = {seq: [100 + seq] for seq in range(8)}
        batched = engine.eval_batch(steps)
        for seq in range(8):
            alone = _engine(gguf_path, n_seq_max=1)
            np.testing.assert_allclose(batched[seq], alone.eval(0, prompt + steps[seq])[-1:], atol=1e-3)
            alone.close()


def test_long_prompt_is_split_into_n_batch_chunks(gguf_path):
    prompt = [int(t) for t in np.random.default_rng(0).integers(4, 390, size=150)]
    with _engine(gguf_path, n_batch=32) as small, _engine(gguf_path) as big:
        # Kernels differ with the batch shape (f16 activations on larger batches): 1e-2, not 1e-3;
        # a wrong position or a lost chunk would be off by whole logits.
        np.testing.assert_allclose(small.eval(0, prompt), big.eval(0, prompt), atol=1e-2)


def test_prefill_returns_the_last_row_and_keeps_the_books(gguf_path):
    prompt = list(range(10, 80))
    with _engine(gguf_path, n_batch=32) as engine:
        full = engine.eval(0, prompt)
        last = engine.prefill(1, prompt)
        assert last.shape == (1, engine.info.n_vocab)
        np.testing.assert_allclose(last, full[-1:], atol=1e-3)
        assert engine.n_tokens(1) == len(prompt)
        np.testing.assert_allclose(engine.eval(1, [5]), engine.eval(0, [5]), atol=1e-3)


def test_a_full_kv_cache_is_a_clear_error(gguf_path):
    prompt = [int(t) for t in np.random.default_rng(0).integers(4, 390, size=200)]
    with _engine(gguf_path, n_seq_max=2, n_ctx=256, kv_cells=256) as engine:
        engine.eval(0, prompt)
        with pytest.raises(ContextOverflowError, match="KV cache is full"):
            engine.eval(1, prompt)
        assert engine.n_tokens(1) == 0
        # the chunk that did fit is rolled back, or seq 1 would see its own stale positions twice
    with _engine(gguf_path, n_seq_max=2, n_ctx=256, kv_cells=256, n_batch=50) as engine:
        engine.eval(0, prompt)
        with pytest.raises(ContextOverflowError):
            engine.eval(1, prompt[:100])  # first 50 fit, the second 50 do not
        assert engine.n_tokens(1) == 0
        engine.release(0)
        np.testing.assert_allclose(engine.eval(1, prompt[:50]), engine.eval(0, prompt[:50]), atol=1e-3)


def test_llama_cpp_prints_nothing(gguf_path, capfd):
    capfd.readouterr()
    with _engine(gguf_path) as engine:
        engine.eval(0, [1, 2, 3])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_threads_follow_the_free_cores_unless_fixed(gguf_path, monkeypatch):
    from edgetts.runtimes import llamacpp

    class TwoThenOne:  # a machine whose second core another process takes after the first decode
        def __init__(self, most):
            self.threads, self.calls = 2, 0

        def update(self):
            self.calls += 1
            self.threads = 2 if self.calls == 1 else 1
            return self.threads

    monkeypatch.setattr(llamacpp, "FreeCores", TwoThenOne)
    with _engine(gguf_path) as engine:
        assert engine.info.extra["n_threads"] == "auto" and engine.threads == (2, 2)
        first = engine.eval(0, [1, 2, 3])
        assert engine.threads == (2, 2)
        engine.release(0)
        second = engine.eval(0, [1, 2, 3])
        assert engine.threads == (1, 1)
        np.testing.assert_allclose(second, first, rtol=1e-5, atol=1e-5)  # fewer threads, same logits
    with _engine(gguf_path, single_token_threads=1) as engine:  # one-token steps keep their own count
        engine.eval(0, [1, 2, 3])
        assert engine.threads == (1, 2)
    with _engine(gguf_path, n_threads=2) as engine:
        engine.eval(0, [1, 2, 3])
        engine.eval(0, [4])
        assert engine.threads == (2, 2) and engine.info.extra["n_threads"] == 2

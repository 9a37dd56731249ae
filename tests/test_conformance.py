"""The Engine contract: every engine must pass every test here.

To add an engine, add a factory to ENGINES: name -> (build(tiny_model) -> Engine, logits tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetts.errors import ConfigError, ContextOverflowError, SequenceError


def _fake(tiny_model):
    from edgetts.testing import FakeEngine

    return FakeEngine(n_seq_max=8, n_ctx=64)


def _torch(arch):
    def build(tiny_model):
        pytest.importorskip("transformers")
        from edgetts.runtimes.torch import TorchEngine

        return TorchEngine(tiny_model(arch), n_seq_max=8)

    return build


def _llamacpp(arch):
    """The tiny checkpoint exported to f32 GGUF once per session (beside the checkpoint)."""
    def build(tiny_model):
        pytest.importorskip("llama_cpp")
        from edgetts.export.gguf import export_gguf
        from edgetts.runtimes.llamacpp import LlamaCppEngine

        folder = tiny_model(arch)
        path = folder.parent / f"{folder.name}.f32.gguf"
        if not path.exists():
            export_gguf(folder, path, quant="f32", progress=False)
        return LlamaCppEngine(path, n_seq_max=8, n_ctx=256)

    return build


def _onnx(arch):
    """The tiny checkpoint exported to an fp32 ONNX folder once per session (beside the checkpoint)."""
    def build(tiny_model):
        pytest.importorskip("optimum.exporters.onnx")
        from edgetts.runtimes.onnxruntime import OnnxEngine
        from edgetts.testing import tiny_onnx

        return OnnxEngine(tiny_onnx(tiny_model(arch)), device="cpu", n_seq_max=8, n_ctx=256)

    return build


ENGINES = {
    "fake": (_fake, 0.0),
    "torch-llama": (_torch("llama"), 1e-4),
    "torch-qwen2": (_torch("qwen2"), 1e-4),
    # llama.cpp keeps the KV cache in f16 and picks kernels by batch shape: 1e-3 absorbs that.
    "llamacpp-llama": (_llamacpp("llama"), 1e-3),
    "llamacpp-qwen2": (_llamacpp("qwen2"), 1e-3),
    # fp32 all the way, but batch width and padding change MatMul blocking: 1e-4 absorbs that.
    "onnx-llama": (_onnx("llama"), 1e-4),
    "onnx-qwen2": (_onnx("qwen2"), 1e-4),
}

PROMPT = [5, 17, 42, 99, 3, 250, 7]
MORE = [11, 12, 13]


@pytest.fixture(params=list(ENGINES))
def engine(request, tiny_model):
    build, tol = ENGINES[request.param]
    eng = build(tiny_model)
    eng.tol = tol
    yield eng
    eng.close()


def fresh(engine, seq, tokens):
    engine.release(seq)
    return engine.eval(seq, tokens)


def close(engine, a, b):
    np.testing.assert_allclose(a, b, atol=engine.tol, rtol=engine.tol)


def test_eval_returns_one_row_of_logits_per_token(engine):
    logits = engine.eval(0, PROMPT)
    assert logits.shape == (len(PROMPT), engine.info.n_vocab)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    assert engine.n_tokens(0) == len(PROMPT)
    assert engine.eval(0, MORE).shape == (len(MORE), engine.info.n_vocab)
    assert engine.n_tokens(0) == len(PROMPT) + len(MORE)


def test_incremental_eval_equals_one_shot(engine):
    whole = engine.eval(0, PROMPT + MORE)
    engine.eval(1, PROMPT)
    close(engine, engine.eval(1, MORE), whole[len(PROMPT):])


def test_eval_batch_equals_separate_evals(engine):
    # Sequences of different past and new lengths, one of them empty before the batch.
    engine.eval(0, PROMPT)
    engine.eval(1, PROMPT[:3])
    batch = engine.eval_batch({0: MORE, 1: [8, 9], 2: PROMPT[:5]})
    close(engine, batch[0], fresh(engine, 5, PROMPT + MORE)[len(PROMPT):])
    close(engine, batch[1], fresh(engine, 5, PROMPT[:3] + [8, 9])[3:])
    close(engine, batch[2], fresh(engine, 5, PROMPT[:5]))
    assert [engine.n_tokens(s) for s in (0, 1, 2)] == [len(PROMPT) + 3, 5, 5]


def test_fork_equals_recomputing_the_shared_prefix(engine):
    engine.eval(0, PROMPT)
    engine.fork(0, 1)
    assert engine.n_tokens(1) == len(PROMPT)
    forked = engine.eval(1, MORE)
    close(engine, forked, fresh(engine, 2, PROMPT + MORE)[len(PROMPT):])
    # The source is untouched by its fork's growth.
    close(engine, engine.eval(0, [8]), fresh(engine, 3, PROMPT + [8])[-1:])


def test_fork_replaces_an_existing_destination(engine):
    engine.eval(0, PROMPT)
    engine.eval(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    engine.fork(0, 1)
    assert engine.n_tokens(1) == len(PROMPT)
    close(engine, engine.eval(1, MORE), fresh(engine, 2, PROMPT + MORE)[len(PROMPT):])


def test_truncate_then_eval_equals_fresh_eval(engine):
    engine.eval(0, PROMPT + MORE)
    engine.truncate(0, 4)
    assert engine.n_tokens(0) == 4
    close(engine, engine.eval(0, [60, 61]), fresh(engine, 1, PROMPT[:4] + [60, 61])[4:])


def test_sequences_never_leak_into_each_other(engine):
    engine.eval(0, PROMPT)
    before = fresh(engine, 2, PROMPT + MORE)[len(PROMPT):]
    engine.eval(1, [200, 201, 202, 203])
    engine.fork(1, 3)
    engine.eval(3, [9, 9, 9])
    close(engine, engine.eval(0, MORE), before)


def test_release_frees_the_slot(engine):
    engine.eval(0, PROMPT)
    engine.release(0)
    assert engine.n_tokens(0) == 0
    assert 0 not in getattr(engine, "sequences", lambda: [])()
    close(engine, engine.eval(0, MORE), fresh(engine, 1, MORE))
    engine.release(7)  # releasing a free id is harmless


def test_bad_input_fails_clearly(engine):
    with pytest.raises(SequenceError, match="out of range"):
        engine.eval(engine.info.n_seq_max, [1])
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        engine.eval(0, [engine.info.n_vocab])
    with pytest.raises(SequenceError, match="holds nothing"):
        engine.fork(4, 5)
    engine.eval(0, [1, 2])
    with pytest.raises(SequenceError, match="cannot truncate"):
        engine.truncate(0, 3)
    with pytest.raises(ContextOverflowError, match="context length"):
        engine.eval(0, [1] * engine.info.n_ctx)
    assert engine.n_tokens(0) == 2  # a refused eval changes nothing

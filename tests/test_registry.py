from __future__ import annotations

import pytest

import edgetts
from edgetts.errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from edgetts.runtimes import detect_runtime, resolve


def test_detects_runtime_from_the_artifact(tmp_path, tiny_model):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    (onnx_dir / "model.onnx").write_bytes(b"")
    assert detect_runtime(tmp_path / "m.gguf") == "llama.cpp"
    assert detect_runtime(onnx_dir) == "onnxruntime"
    assert detect_runtime(tiny_model("llama")) == "torch"


def test_bad_paths_say_what_is_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        detect_runtime(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match=".gguf"):
        detect_runtime(tmp_path / "weights.bin")
    with pytest.raises(UnsupportedModelError, match="edgetts export"):
        detect_runtime(tmp_path)


def test_unknown_runtime_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid runtimes: .*torch"):
        resolve("tensorflow")
    assert resolve("transformers").name == "torch"


def test_load_picks_the_torch_reference_for_a_hf_folder(tiny_model):
    with edgetts.load(tiny_model("qwen2")) as engine:
        assert engine.info.runtime == "torch" and engine.info.arch == "qwen2"
        assert isinstance(engine, edgetts.Engine)
    with edgetts.load(tiny_model("llama"), runtime="hf", device="cpu") as engine:
        assert engine.info.arch == "llama" and engine.info.device == "cpu"

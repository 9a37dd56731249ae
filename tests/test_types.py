from __future__ import annotations

import pytest

from edgetts.errors import ConfigError
from edgetts.export import atomic_output
from edgetts.types import SamplingParams


@pytest.mark.parametrize("field, value", [("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("top_k", -2),
                                          ("min_p", 1.0), ("repetition_penalty", 0)])
def test_sampling_params_name_the_bad_field(field, value):
    with pytest.raises(ConfigError, match=f"{field}={value}"):
        SamplingParams(**{field: value})


def test_temperature_zero_is_greedy():
    assert SamplingParams().greedy and not SamplingParams(temperature=0.7).greedy


def test_atomic_output_renames_only_on_success(tmp_path):
    dest = tmp_path / "model.gguf"
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"done")
        assert not dest.exists()
    assert dest.read_bytes() == b"done"
    with pytest.raises(ConfigError, match="--overwrite"):
        with atomic_output(dest):
            pass


def test_atomic_output_leaves_nothing_after_a_crash(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(dest, is_dir=True) as tmp:
            (tmp / "model.onnx").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_replaces_a_folder_when_asked(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.onnx").write_bytes(b"old")
    with atomic_output(dest, is_dir=True, overwrite=True) as tmp:
        (tmp / "new.onnx").write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in dest.iterdir()] == ["new.onnx"]

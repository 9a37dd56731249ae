"""Shared fixtures. Every model is built locally, once per test session; nothing is downloaded."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_root):
    """tiny_model(arch, n_layers=2) -> folder of a tiny random HF checkpoint, written once."""
    from edgetts.testing import tiny_checkpoint

    return lambda arch, n_layers=2: tiny_checkpoint(arch, model_root, n_layers=n_layers)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model):
    """tiny_gguf(arch, quant="f32", layers=None, n_layers=2) -> a tiny checkpoint exported to GGUF, once."""
    def make(arch, quant="f32", layers=None, n_layers=2):
        from edgetts.export.gguf import export_gguf

        folder = tiny_model(arch, n_layers)
        path = folder.parent / f"{folder.name}.{quant}{f'.k{layers}' if layers else ''}.gguf"
        if not path.exists():
            export_gguf(folder, path, quant=quant, layers=layers, progress=False)
        return path

    return make

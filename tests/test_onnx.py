"""ONNX exporter: parity with torch, quantization, the self-contained folder, early-exit drafters.

Each tiny export is written once per session beside its checkpoint (`edgetts.testing.tiny_onnx`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")

from edgetts.errors import ConfigError, UnsupportedModelError  # noqa: E402
from edgetts.export.onnx import ARCHS  # noqa: E402
from edgetts.export.onnx_parity import PROMPT, greedy  # noqa: E402
from edgetts.testing import TINY_CONFIGS, tiny_onnx  # noqa: E402

STEPS = 32


def engines(checkpoint, folder):
    from edgetts.runtimes.onnxruntime import OnnxEngine
    from edgetts.runtimes.torch import TorchEngine

    return TorchEngine(checkpoint, n_seq_max=2), OnnxEngine(folder, device="cpu", n_seq_max=2)


def prompt_of(engine) -> list[int]:
    return engine.tokenizer.encode(PROMPT)


def test_every_onnx_architecture_has_a_tiny_model():
    # The parity test below walks TINY_CONFIGS: an architecture without one would go untested.
    assert set(ARCHS) <= set(TINY_CONFIGS)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_fp32_greedy_tokens_match_torch_for_32_steps(arch, tiny_model):
    checkpoint = tiny_model(arch)
    reference, onnx = engines(checkpoint, tiny_onnx(checkpoint))
    with reference, onnx:
        prompt = prompt_of(reference)
        assert greedy(onnx, prompt, STEPS) == greedy(reference, prompt, STEPS)
        np.testing.assert_allclose(onnx.eval(0, prompt), reference.eval(0, prompt), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("quant, floor", [("fp16", 0.9), ("int8", 0.8), ("int4", 0.4)])
def test_quantized_parity_is_measured_and_recorded(quant, floor, tiny_model):
    folder = tiny_onnx(tiny_model("qwen2"), quant)
    manifest = json.loads((folder / "manifest.json").read_text())
    fp32 = json.loads((tiny_onnx(tiny_model("qwen2")) / "manifest.json").read_text())
    parity = manifest["parity"]
    print(f"{quant}: top-1 agreement {parity['top1_agreement']:.3f} over {parity['steps']} teacher-forced steps, "
          f"greedy identical for {parity['greedy_identical_steps']}, {manifest['bits_per_weight']} bits/weight")
    assert manifest["quant"]["name"] == quant and parity["steps"] == STEPS
    # Random 64-wide weights are the worst case for 4-bit blocks; real-size figures are in the benchmark.
    assert parity["top1_agreement"] >= floor
    assert manifest["size_bytes"] < fp32["size_bytes"]


def test_int4_quantizes_the_lm_head_and_the_embedding(tiny_model):
    import onnx

    folder = tiny_onnx(tiny_model("qwen2"), "int4")
    graph = onnx.load(str(folder / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "MatMul" not in {
        n.op_type for n in graph.node if any(i in {t.name for t in graph.initializer} for i in n.input)}
    config = json.loads((folder / "config.json").read_text())
    head = config["vocab_size"] * config["hidden_size"]
    assert not [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= head]
    quant = json.loads((folder / "manifest.json").read_text())["quant"]
    assert quant == {"name": "int4", "block_size": 32, "accuracy_level": 4, "symmetric": True,
                     "batch_invariant": True, "tied_head_shared": True}
    # Tied checkpoint: the embedding gather reads the LM head's int4 bytes, stored once.
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == gather.input[0])
    assert head is not None


def test_sharing_the_tied_head_changes_no_logit(tiny_model, tmp_path):
    import shutil

    from edgetts.export.onnx_quant import QuantSpec, quantize
    from edgetts.runtimes.onnxruntime import OnnxEngine

    fp32 = tiny_onnx(tiny_model("qwen2"))
    separate = tmp_path / "separate"
    shutil.copytree(fp32, separate, ignore=shutil.ignore_patterns("model.onnx*", "manifest.json"))
    quantize(fp32 / "model.onnx", separate / "model.onnx", QuantSpec.parse("int4"))  # tied=False: two copies
    ids = list(range(0, 400, 7))
    with OnnxEngine(separate, device="cpu") as a, OnnxEngine(tiny_onnx(tiny_model("qwen2"), "int4"), device="cpu") as b:
        np.testing.assert_array_equal(a.eval(0, ids), b.eval(0, ids))
    sizes = [(f / "model.onnx").stat().st_size for f in (separate, tiny_onnx(tiny_model("qwen2"), "int4"))]
    assert sizes[1] < sizes[0]


@pytest.mark.parametrize("quant", ["fp32", "int4", "int8"])
def test_batch_invariance_is_declared_truthfully(quant, tiny_model):
    from edgetts.runtimes.onnxruntime import OnnxEngine

    with OnnxEngine(tiny_onnx(tiny_model("qwen2"), quant), device="cpu", n_seq_max=4) as engine:
        a, b = [5, 6, 7, 8, 9, 10], [100, 200, 300, 50]
        batch = engine.eval_batch({0: a, 1: b})
        gap = max(np.abs(batch[0] - engine.eval(2, a)).max(), np.abs(batch[1] - engine.eval(3, b)).max())
        invariant = engine.info.extra["batch_invariant"]
    print(f"{quant}: batched vs single max logit gap {gap:.2e}")
    assert invariant == (gap < 1e-4)


def test_int4_options_pass_through(tiny_model):
    import onnx

    folder = tiny_onnx(tiny_model("llama"), "int4:block_size=16,accuracy_level=0")
    nodes = [n for n in onnx.load(str(folder / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: a.i for a in nodes[0].attribute}
    assert attrs["block_size"] == 16 and attrs.get("accuracy_level", 0) == 0


def test_the_folder_is_self_contained(tiny_model):
    folder = tiny_onnx(tiny_model("llama"))
    names = {p.name for p in folder.iterdir()}
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json", "manifest.json",
            "genai_config.json"} <= names
    assert not any(n.startswith(".") for n in names)  # no staging leftovers
    manifest = json.loads((folder / "manifest.json").read_text())
    from edgetts import __version__

    assert manifest["edgetts_version"] == __version__ and manifest["source"].endswith("llama-2l-s0")
    assert manifest["parity"]["greedy_identical_steps"] == STEPS and manifest["parity"]["top1_agreement"] == 1.0
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    assert decoder["num_hidden_layers"] == 2 and decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"


def test_early_exit_drafter_is_the_first_k_layers_plus_norm_and_head(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from edgetts.runtimes.onnxruntime import OnnxEngine

    checkpoint = tiny_model("llama", 4)
    with OnnxEngine(tiny_onnx(checkpoint, layers=2), device="cpu") as drafter:
        assert drafter.info.early_exit_layers == 2 and drafter.info.n_layers == 2
        prompt = prompt_of(drafter)
        got = drafter.eval(0, prompt)
    full = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    with torch.no_grad():
        hidden = full(torch.tensor([prompt]), output_hidden_states=True).hidden_states[2]
        expected = full.lm_head(full.model.norm(hidden))[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_optimum_and_onnxruntime_genai_give_our_greedy_tokens(quant, tiny_model):
    import onnxruntime  # noqa: F401  onnxruntime-genai loads the onnxruntime library this import provides
    import torch

    og = pytest.importorskip("onnxruntime_genai")
    from optimum.onnxruntime import ORTModelForCausalLM

    from edgetts.runtimes.onnxruntime import OnnxEngine

    folder = tiny_onnx(tiny_model("qwen2"), quant)
    with OnnxEngine(folder, device="cpu") as engine:
        prompt = prompt_of(engine)
        ours = greedy(engine, prompt, STEPS)
    optimum = ORTModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([prompt])
    out = optimum.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=STEPS, do_sample=False)
    assert out[0, len(prompt):].tolist() == ours
    assert genai_greedy(og, folder, prompt, STEPS) == ours


def genai_greedy(og, folder, prompt: list[int], steps: int) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[len(prompt):]]


def test_unsupported_architecture_fails_at_once_with_the_list(tmp_path):
    from edgetts.export.onnx import export_onnx

    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="supported: llama, mistral, qwen2, qwen3"):
        export_onnx(tmp_path / "gpt2", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_quant_and_layers_say_what_is_valid(tiny_model, tmp_path):
    from edgetts.export.onnx import export_onnx
    from edgetts.export.onnx_quant import QuantSpec

    with pytest.raises(ConfigError, match="valid ONNX quants: fp16, fp32, int4, int8"):
        QuantSpec.parse("q4_0")
    with pytest.raises(ConfigError, match="int4 takes: block_size"):
        QuantSpec.parse("int8:block_size=32")
    with pytest.raises(ConfigError, match="power of two"):
        QuantSpec.parse("int4:block_size=48")
    assert QuantSpec.parse(None).name == "int4"
    with pytest.raises(ConfigError, match="this model has 2 layers"):
        export_onnx(tiny_model("llama"), tmp_path / "out", layers=3, progress=False)


def test_a_failed_export_leaves_nothing_behind(tiny_model, tmp_path, monkeypatch):
    import edgetts.export.onnx as onnx_export

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "quantize", broken)
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(tiny_model("llama"), tmp_path / "out", quant="int8", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_onnx(tiny_model, tmp_path, capsys):
    from edgetts.cli import main

    with pytest.raises(SystemExit) as done:
        main(["export", str(tiny_model("qwen2")), "--format", "onnx", "--quant", "int8", "--out", str(tmp_path / "m")])
    assert done.value.code == 0 and "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["quant"]["name"] == "int8"

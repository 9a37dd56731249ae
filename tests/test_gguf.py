"""GGUF exporter: parity with the torch reference for every supported architecture, every quant
type, the early-exit drafter, streaming/atomic output and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest

from edgetts.errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from edgetts.export.gguf_arch import ARCHS, QUANTS
from edgetts.testing import sample_corpus

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

STEPS = 32
CORPUS = sample_corpus() + [
    "  leading spaces,\ttabs\t\tand trailing   ",
    "line one\n\n\n   line four\r\nwindows",
    "12345678901234567890 3.14159265 -0.001 1e10 ١٢٣ ５６",
    "Ünïcödé: ñ ß ø œ 你好世界 こんにちは 안녕하세요 مرحبا 🤖🧠👩‍💻",
    "<|im_start|>user\nhi<|im_end|>",  # special tokens inside text
]


def _engines(path, folder, model=None):
    from edgetts.runtimes.llamacpp import LlamaCppEngine
    from edgetts.runtimes.torch import TorchEngine

    return LlamaCppEngine(path, n_seq_max=2, n_ctx=512), TorchEngine(folder, n_seq_max=2, model=model)


def _greedy(engine, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    tokens, rows = [], []
    logits = engine.eval(0, prompt)[-1]
    for _ in range(steps):
        rows.append(logits)
        tokens.append(int(np.argmax(logits)))
        logits = engine.eval(0, [tokens[-1]])[-1]
    return tokens, rows


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_f32_greedy_tokens_match_torch(arch, tiny_model, tiny_gguf, record_property):
    ours, ref = _engines(tiny_gguf(arch), tiny_model(arch))
    prompt = ref.tokenizer.encode("What is 37*48+15? Answer:")
    got, got_rows = _greedy(ours, prompt, STEPS)
    want, want_rows = _greedy(ref, prompt, STEPS)
    diff = float(np.abs(np.stack(got_rows) - np.stack(want_rows)).max())
    record_property("max_logit_diff", diff)
    print(f"\n{arch}: f32 GGUF vs torch, {STEPS} greedy steps, max |logit diff| = {diff:.2e}")
    assert got == want
    assert diff < 2e-2


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_tokenizer_ids_match_hf(arch, tiny_model, tiny_gguf):
    ours, ref = _engines(tiny_gguf(arch), tiny_model(arch))
    for text in CORPUS:
        for special in (True, False):
            assert ours.tokenizer.encode(text, special) == ref.tokenizer.encode(text, special), text
        ids = ref.tokenizer.encode(text, False)
        assert ours.tokenizer.decode(ids) == ref.tokenizer.decode(ids)
    assert ours.tokenizer.bos_id == ref.tokenizer.bos_id
    assert ours.tokenizer.eos_ids <= ref.tokenizer.eos_ids | {ours.tokenizer.bos_id}
    assert ours.tokenizer.chat_template == ref.tokenizer.chat_template


def _briefly_trained(folder, out, tokens: list[int], steps: int = 20):
    """Fit the tiny model to `tokens` for a few steps: a random model's next-token distributions
    are nearly flat (median top-1 margin ~0.2 logits), so q8_0 noise alone would flip its argmax;
    a trained model has real margins, as the checkpoints people export do."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(folder, out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.tensor(tokens).view(2, -1)
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_top1_agrees_on_256_teacher_forced_positions(arch, tiny_model, tmp_path, record_property):
    from edgetts.export.gguf import export_gguf
    from edgetts.tokenizer import HFTokenizer

    tokens = HFTokenizer.from_dir(tiny_model(arch)).encode(" ".join(sample_corpus()))[:256]
    assert len(tokens) == 256
    folder = _briefly_trained(tiny_model(arch), tmp_path / arch, tokens)
    path = export_gguf(folder, tmp_path / f"{arch}.q8_0.gguf", quant="q8_0", progress=False).path
    ours, ref = _engines(path, folder)
    agree = float(np.mean(ours.eval(0, tokens).argmax(-1) == ref.eval(0, tokens).argmax(-1)))
    record_property("q8_0_top1_agreement", agree)
    print(f"\n{arch}: q8_0 top-1 agreement over 256 teacher-forced positions = {agree:.3f}")
    assert agree >= 0.95


@pytest.mark.parametrize("quant", sorted(QUANTS))
def test_every_quant_type_loads_and_generates(quant, tiny_gguf):
    from edgetts.runtimes.gguf_file import read_header
    from edgetts.runtimes.llamacpp import LlamaCppEngine

    path = tiny_gguf("qwen2", quant)
    header = read_header(path)
    assert header.metadata["edgetts.quant"] == quant
    with LlamaCppEngine(path, n_seq_max=1, n_ctx=128) as engine:
        assert engine.info.quant == quant
        tokens, _ = _greedy(engine, engine.tokenizer.encode("1+1="), 8)
    assert len(tokens) == 8 and all(0 <= t < engine.info.n_vocab for t in tokens)


def test_bits_per_weight_and_provenance_are_reported(tiny_model, tmp_path):
    from edgetts.export import export
    from edgetts.runtimes.gguf_file import read_header

    report = export(tiny_model("qwen2"), tmp_path / "m.gguf", quant="q8_0", progress=False)
    header = read_header(report.path)
    assert report.bits_per_weight == pytest.approx(header.bits_per_weight, abs=1e-3)
    assert 8.0 < report.bits_per_weight < 9.0  # q8_0 is 8.5 bpw; 1-D norms stay f32
    assert header.metadata["edgetts.source"] == str(tiny_model("qwen2"))
    assert header.metadata["edgetts.version"]
    assert report.size_bytes == report.path.stat().st_size


def test_early_exit_drafter_is_the_first_k_layers(tiny_model, tiny_gguf):
    """--layers 2 of a 4-layer model == the HF model cut after 2 layers (+ final norm + LM head)."""
    from transformers import AutoModelForCausalLM

    folder = tiny_model("llama", 4)
    cut = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
    cut.model.layers = cut.model.layers[:2]
    cut.config.num_hidden_layers = 2
    ours, ref = _engines(tiny_gguf("llama", "f32", layers=2, n_layers=4), folder, model=cut)
    assert ours.info.n_layers == 2 and ours.info.early_exit_layers == 2
    assert ours.info.extra["source_layers"] == 4
    prompt = ref.tokenizer.encode("What is 2*3?")
    np.testing.assert_allclose(ours.eval(0, prompt), ref.eval(0, prompt), atol=2e-2)


def test_llama3_rope_scaling_matches_torch(tmp_path):
    from edgetts.export.gguf import export_gguf
    from edgetts.testing import TINY_CONFIGS, write_checkpoint

    rope = dict(rope_type="llama3", factor=8.0, high_freq_factor=4.0, low_freq_factor=1.0,
                original_max_position_embeddings=64)
    folder = write_checkpoint(tmp_path / "llama3", dict(TINY_CONFIGS["llama"], rope_scaling=rope), init_std=0.1)
    path = export_gguf(folder, tmp_path / "llama3.gguf", quant="f32", progress=False).path
    ours, ref = _engines(path, folder)
    prompt = ref.tokenizer.encode(" ".join(sample_corpus())[:400])  # past the original 64 positions
    np.testing.assert_allclose(ours.eval(0, prompt), ref.eval(0, prompt), atol=2e-2)


def test_a_failed_export_leaves_nothing_at_out(tiny_model, tmp_path, monkeypatch):
    import edgetts.export.gguf as gguf_export

    calls = []

    def failing_encode(data, ggml_type):
        calls.append(ggml_type)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(data, ggml_type)

    original = gguf_export._encode
    monkeypatch.setattr(gguf_export, "_encode", failing_encode)
    out = tmp_path / "out" / "m.gguf"
    with pytest.raises(KeyboardInterrupt):
        gguf_export.export_gguf(tiny_model("qwen2"), out, quant="f16", progress=False)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no partial or temporary files either


def test_errors_say_how_to_fix(tiny_model, tmp_path):
    from edgetts.export.gguf import export_gguf

    folder = tiny_model("qwen2")
    with pytest.raises(ConfigError, match="valid GGUF quants: .*q4_k_m"):
        export_gguf(folder, tmp_path / "a.gguf", quant="q3_xx", progress=False)
    with pytest.raises(ConfigError, match=r"out of range.*use 1\.\.2"):
        export_gguf(folder, tmp_path / "a.gguf", quant="f16", layers=5, progress=False)
    with pytest.raises(ModelNotFoundError, match="Hugging Face folder"):
        export_gguf(tmp_path / "missing", tmp_path / "a.gguf", progress=False)
    export_gguf(folder, tmp_path / "a.gguf", quant="f16", progress=False)
    with pytest.raises(ConfigError, match="--overwrite"):
        export_gguf(folder, tmp_path / "a.gguf", quant="f16", progress=False)


def test_unsupported_architecture_names_the_supported_ones(tiny_model, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(tiny_model("qwen2"), tmp_path / "gpt-neox")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    from edgetts.export.gguf import export_gguf

    with pytest.raises(UnsupportedModelError, match="'gpt_neox'.*llama, mistral, qwen2, qwen3"):
        export_gguf(folder, tmp_path / "x.gguf", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_pre_tokenizers_are_recognised_or_refused():
    from edgetts.export.gguf_arch import PRE_TOKENIZERS
    from edgetts.export.gguf_vocab import pre_tokenizer_name
    from edgetts.testing import QWEN2_SPLIT

    def split(regex):
        return {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": regex}},
                                                      {"type": "ByteLevel", "use_regex": False}]}

    assert pre_tokenizer_name(split(QWEN2_SPLIT)) == "qwen2"
    llama3 = next(r for r, name in PRE_TOKENIZERS.items() if name == "llama-bpe")
    assert pre_tokenizer_name(split(llama3)) == "llama-bpe"
    assert pre_tokenizer_name({"type": "ByteLevel", "use_regex": True}) == "gpt2"
    with pytest.raises(UnsupportedModelError, match="PRE_TOKENIZERS"):
        pre_tokenizer_name(split(r"\p{N}{1,2}"))
    with pytest.raises(UnsupportedModelError, match="PRE_TOKENIZERS"):
        pre_tokenizer_name({"type": "Whitespace"})


def test_default_quant_avoids_k_quants_that_do_not_fit():
    from edgetts.export.gguf import default_quant
    from edgetts.testing import SHAPE_FAITHFUL_CONFIGS

    assert default_quant(SHAPE_FAITHFUL_CONFIGS["qwen2.5-0.5b"]) == "q4_0"  # hidden 896: not a multiple of 256
    assert default_quant(SHAPE_FAITHFUL_CONFIGS["llama-3.2-1b"]) == "q4_k_m"


def test_rotary_permute_interleaves_each_head():
    from edgetts.export.gguf import rotary_permute

    # one head of dim 4: rows (x0, x1, y0, y1) -> (x0, y0, x1, y1)
    w = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert rotary_permute(w, 1).ravel().tolist() == [0.0, 2.0, 1.0, 3.0]
    two_heads = np.arange(8.0)[:, None]
    assert rotary_permute(two_heads, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def _spm_tokenizer(folder):
    """A Llama-2-style tokenizer.json: BPE over "▁"-joined text with <0xXX> byte fallback."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  show_progress=False)
    tok.train_from_iterator(sample_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    folder.mkdir(parents=True)
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in byte_tokens]  # vocab entries
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True)))
    return folder


def test_sentencepiece_tokenizer_and_model_match_hf(tmp_path):
    from edgetts.export.gguf import export_gguf
    from edgetts.runtimes.gguf_file import read_header
    from edgetts.testing import TINY_CONFIGS, write_checkpoint

    folder = tmp_path / "llama-spm"
    folder.mkdir()
    write_checkpoint(folder, TINY_CONFIGS["llama"], init_std=0.1, tokenizer_from=_spm_tokenizer(tmp_path / "spm"))
    path = export_gguf(folder, tmp_path / "spm.gguf", quant="f32", progress=False).path
    assert read_header(path).metadata["tokenizer.ggml.model"] == "llama"
    ours, ref = _engines(path, folder)
    for text in CORPUS:
        for special in (True, False):
            assert ours.tokenizer.encode(text, special) == ref.tokenizer.encode(text, special), text
        ids = ref.tokenizer.encode(text, False)
        assert ours.tokenizer.decode(ids) == ref.tokenizer.decode(ids)
    prompt = ref.tokenizer.encode("What is 37*48+15? Answer:")
    assert _greedy(ours, prompt, STEPS)[0] == _greedy(ref, prompt, STEPS)[0]


def test_pytorch_bin_checkpoints_export_like_safetensors(tiny_model, tiny_gguf, tmp_path):
    """.bin weights are read with torch.load(weights_only=True) and give the same GGUF tensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from edgetts.export.gguf import export_gguf
    from edgetts.runtimes.gguf_file import read_header

    folder = shutil.copytree(tiny_model("qwen2"), tmp_path / "bin-model")
    weights = folder / "model.safetensors"
    torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    path = export_gguf(folder, tmp_path / "bin.gguf", quant="f32", progress=False).path
    same = tiny_gguf("qwen2")
    assert [(t.name, t.shape) for t in read_header(path).tensors] == [(t.name, t.shape) for t in read_header(same).tensors]
    start, other = read_header(path).data_offset, read_header(same).data_offset
    assert path.read_bytes()[start:] == same.read_bytes()[other:]

"""The built-in model family: files, tokenizer, behaviour, artifact cache, metrics, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgetts import arithmetic, embedded
from edgetts.embedded import evaluate as ev
from edgetts.errors import ConfigError

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="module")
def generator():
    return ev.load("generator")


@pytest.mark.parametrize("name", embedded.NAMES)
def test_built_in_folders_are_complete_llama_checkpoints(name):
    folder = embedded.path(name)
    assert all((folder / f).is_file() for f in HF_FILES)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (folder / "tokenizer.json").read_bytes() == (embedded.path("generator") / "tokenizer.json").read_bytes()


def test_sizes_fit_the_budget_and_roles_are_ordered():
    infos = {m.name: m for m in embedded.list_models()}
    assert set(infos) == set(embedded.NAMES)
    assert sum(m.size_bytes for m in infos.values()) <= 30_000_000
    assert 5e6 <= infos["generator"].parameters <= 20e6, "the issue's generator size: ~5-20 M"
    assert 0.5e6 <= infos["draft"].parameters <= 2e6, "the issue's draft size: ~0.5-2 M"


def test_unknown_name_says_which_exist():
    with pytest.raises(ConfigError, match="generator"):
        embedded.path("gpt5")


def test_tokenizer_keeps_digits_apart_and_verifier_words_whole(generator):
    _, tok = generator
    assert tok.encode("1791").tokens == ["1", "7", "9", "1"]
    assert all(len(tok.encode(w).ids) == 1 for w in embedded.VERIFIER_WORDS)
    assert "chat_template" not in json.loads((embedded.path() / "tokenizer_config.json").read_text())


def test_generator_solves_easy_problems_with_worked_steps(generator):
    level1 = [p for p in arithmetic.split("dev") if p.level == 1][:16]
    texts = [g[0] for g in ev.sample(*generator, [p.prompt for p in level1])]
    assert sum(arithmetic.check(t, p.answer) for t, p in zip(texts, level1)) >= 10
    assert all(t.startswith("\n") and "Answer:" in t for t in texts)


def test_verifier_prefers_the_right_one_of_two_real_samples():
    """90 dev problems where the generator drew a right and a wrong sample (T = 0.7, min-p 0.2).

    Real samples, not hand-made slips: this verifier (trained on such samples) barely notices a
    hand-edited answer line (26 of 40 at level 1), and within one problem it is a weak judge (model card).
    """
    pairs = json.loads((Path(__file__).parent / "data" / "verifier_pairs.json").read_text())
    model, tok = ev.load("verifier")
    right = ev.verifier_scores(model, tok, [p["prompt"] + p["right"] for p in pairs])
    wrong = ev.verifier_scores(model, tok, [p["prompt"] + p["wrong"] for p in pairs])
    assert all(arithmetic.check(p["right"], arithmetic.evaluate(p["prompt"][8:-1])) for p in pairs)
    # A coin would prefer the right one 45 +- 4.7 times; 54 or more happens by chance with p ~ 0.04.
    # The shipped verifier prefers it 57 times.
    assert sum(r > w for r, w in zip(right, wrong)) >= 54


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGETTS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == tmp_path / "xdg" / "edgetts"
    monkeypatch.setenv("EDGETTS_CACHE", str(tmp_path / "mine"))
    assert embedded.cache_dir() == tmp_path / "mine"


def test_artifact_exports_once_into_the_cache(monkeypatch, tmp_path):
    import edgetts.export

    monkeypatch.setenv("EDGETTS_CACHE", str(tmp_path))
    calls = []

    def fake_export(model, out, format, quant, progress):
        calls.append((model, out, format))
        out.write_bytes(b"GGUF")

    monkeypatch.setattr(embedded, "has_exporter", lambda format: True)
    monkeypatch.setattr(edgetts.export, "export", fake_export)
    first = embedded.artifact("draft", "gguf")
    assert first == embedded.artifact("draft", "gguf") and len(calls) == 1
    assert first.parent == tmp_path / "embedded" and first.suffix == ".gguf"
    assert calls[0][0] == embedded.path("draft")


def test_artifact_falls_back_to_the_hf_folder_without_an_exporter(monkeypatch):
    monkeypatch.setattr(embedded, "has_exporter", lambda format: False)
    assert embedded.artifact("generator", "onnx") == embedded.path("generator")
    with pytest.raises(ConfigError, match="gguf"):
        embedded.artifact("generator", "tflite")


def test_models_command_lists_the_built_ins(capsys):
    from edgetts.cli import main

    with pytest.raises(SystemExit) as done:
        main(["models"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in embedded.NAMES) and "M" in out


# --- the metrics behind the model card -----------------------------------------------------------

def test_pass_at_k_is_the_unbiased_estimator():
    assert ev.pass_at_k(10, 0, 5) == 0.0
    assert ev.pass_at_k(10, 10, 1) == 1.0
    assert ev.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_power_law_fit_recovers_its_parameters():
    ks = list(range(1, 65))
    fit = ev.fit_power_law(ks, [math.exp(-0.9 * k ** -0.35) for k in ks])
    assert fit["a"] == pytest.approx(-0.9, abs=1e-3) and fit["b"] == pytest.approx(-0.35, abs=1e-3)


def test_auroc_and_majority():
    assert ev.auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert ev.auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert ev.auroc([0.5, 0.5], [True, False]) == 0.5
    assert ev.majority([3, 5, 5, None, 3]) == 3, "ties go to the answer seen first"
    assert ev.majority([None, None]) is None
    assert ev.majority([3, 5, 5], weights=[0.9, 0.1, 0.1]) == 3


def test_k_sample_methods_average_over_disjoint_blocks():
    assert ev.blocks(64, 16) == [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)]
    assert ev.blocks(10, 4) == [slice(0, 4), slice(4, 8)], "a partial block is not a block"
    problems = [arithmetic.Problem("1+1", 2, 1), arithmetic.Problem("2*3", 6, 1)]
    solved = {(0, 0), (0, 2), (1, 1)}  # problem 0 in blocks 0 and 2, problem 1 in block 1 of 4
    acc = ev.over_blocks(problems, 8, 2, lambda i, s: (i, s.start // 2) in solved)
    assert acc["overall"] == 37.5 and acc["1"] == 37.5
    samples = [["2,\nAnswer: 2"] * 2 + ["Answer: 3"] * 6, ["Answer: 6"] * 4 + ["Answer: 5"] * 4]
    votes = ev.scaling(problems, samples, [True, True])["majority_at_k"]
    assert votes[2]["overall"] == 37.5  # 1 of 4 blocks + 2 of 4
    assert votes[8]["overall"] == 50.0  # one block: 3 outvotes 2; the 4-4 tie goes to 6, seen first


def test_training_batches_are_deterministic_and_mask_the_prompt():
    from tokenizers import Tokenizer

    from edgetts.embedded.train import lm_batch

    tok = Tokenizer.from_file(str(embedded.path() / "tokenizer.json"))
    batch = lm_batch(tok, step=500, rows=2, seed=0)
    assert batch["input_ids"].equal(lm_batch(tok, step=500, rows=2, seed=0)["input_ids"])
    ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    first = tok.decode(ids[: int((positions[1:] == 0).nonzero()[0]) + 1].tolist())
    assert first.startswith("What is ") and "Answer:" in first
    prompt_len = len(tok.encode(first.split("?")[0] + "?").ids)
    assert (labels[:prompt_len] == -100).all() and (labels[prompt_len:] != -100).any()


def test_training_batches_fill_a_fixed_shape_so_the_step_compiles_once():
    from tokenizers import Tokenizer

    from edgetts.embedded.train import PACK_WIDTH, lm_batch

    tok = Tokenizer.from_file(str(embedded.path() / "tokenizer.json"))
    for step in (0, 400, 2000):  # the curriculum's short level-1 problems and the full mix
        batch = lm_batch(tok, step=step, rows=6, seed=0)
        assert batch["input_ids"].shape == batch["labels"].shape == (6, PACK_WIDTH)
        assert (batch["position_ids"] > 0).float().mean() > 0.8, "rows are filled, not padded"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_compute_exactly_what_each_example_alone_would(attention):
    """Packing lays several problems in one row; the block mask and reset positions must make it exact."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgetts.embedded.train import lm_loss, pack

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    model.config._attn_implementation = attention  # training runs eager: it adds the mask to the scores
    examples = [([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5]), ([6, 7, 8], [-100, 7, 8]),
                ([9, 10, 11, 12], [-100, -100, -100, 12]), ([13, 14, 15, 16, 17, 18], [-100, 14, 15, 16, 17, 18])]
    batch = pack(examples, pad_id=0, width=10)
    assert batch["input_ids"].shape == (2, 10), "18 tokens fit two rows of 10"
    total = sum(F.cross_entropy(model(input_ids=torch.tensor([ids])).logits[0, :-1], torch.tensor(labels[1:]),
                                reduction="sum") for ids, labels in examples)
    n_targets = sum(sum(label != -100 for label in labels[1:]) for _, labels in examples)
    with torch.no_grad():
        assert lm_loss(model, batch, exit_weight=0.0).item() == pytest.approx(total.item() / n_targets, rel=1e-5)
        unmasked = dict(batch, attention_mask=None)  # without the block mask, later examples see earlier ones
        assert lm_loss(model, unmasked, exit_weight=0.0).item() != pytest.approx(total.item() / n_targets, rel=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        pack([(list(range(11)), list(range(11)))], pad_id=0, width=10)


@pytest.mark.slow
@pytest.mark.parametrize("format", ["gguf", "onnx"])
def test_each_built_in_exports_and_answers_through_run(format, monkeypatch, tmp_path):
    """The must-show: every built-in exported by the real exporter answers through `edgetts run`'s path."""
    from edgetts.runner import run

    monkeypatch.setenv("EDGETTS_CACHE", str(tmp_path))
    generator = run("What is 9+5?", embedded.artifact("generator", format), max_tokens=40)
    assert arithmetic.check(generator["text"], 14), generator["text"]
    draft = run("What is 9+5?", embedded.artifact("draft", format), max_tokens=40)
    assert "Answer:" in draft["text"]
    verdict = run("What is 9+5?\n9+5=14\nAnswer: 14" + embedded.VERIFIER_SUFFIX,
                  embedded.artifact("verifier", format), max_tokens=1)
    assert verdict["text"].strip() in ("yes", "no")

"""Speculative decoding: lossless on every engine and drafter, the right distribution at T > 0,
the adaptive draft length and the off-switch.

To add an engine, add one line to ENGINES: name -> build(models) returning (target, drafter
factories), where `models` gives tiny checkpoints (see the `models` fixture).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from edgetts.drafters import (EarlyExitDrafter, ModelDrafter, NGramDrafter, check_compatible, early_exit_artifact,
                              lookup, make_drafter)
from edgetts.errors import ConfigError, ModelNotFoundError
from edgetts.generate import generate
from edgetts.speculative import DraftPolicy, verify
from edgetts.sampling import Sampler
from edgetts.testing import FakeEngine, hashed_logits
from edgetts.types import SamplingParams

PROMPT = "def add(a, b):\n    return a + b\n\ndef add("  # code repeats itself: every drafter gets chances


# --- engines table ------------------------------------------------------------------------

def _fake(models):
    def early_layers(prefix):  # the target's logits, blurred: agrees often, not always
        return hashed_logits(prefix, 258) + 2.5 * hashed_logits(prefix + (1,), 258)

    target = FakeEngine(n_seq_max=4, n_ctx=512)
    return target, {
        "draft-model": lambda: ModelDrafter(FakeEngine(script=lambda p: hashed_logits(p + (7,), 258))),
        "early-exit": lambda: EarlyExitDrafter(FakeEngine(script=early_layers), 1),
    }


def _torch(arch):
    def build(models):
        from edgetts.runtimes.torch import TorchEngine

        target = models(arch, 2)
        return TorchEngine(target, n_seq_max=4, n_threads=1), {  # one thread: tiny models, busy machines
            "draft-model": lambda: ModelDrafter(TorchEngine(models(arch, 1, seed=1))),
            "early-exit": lambda: EarlyExitDrafter.for_model(target, 1),
        }

    return build


def _llamacpp(arch):
    def build(models):
        pytest.importorskip("llama_cpp")
        from edgetts.runtimes.llamacpp import LlamaCppEngine

        target, early, draft = models(arch, 2, fmt="gguf"), models(arch, 2, fmt="gguf", layers=1), \
            models(arch, 1, seed=1, fmt="gguf")
        return LlamaCppEngine(target, n_seq_max=4, n_ctx=256), {
            "draft-model": lambda: ModelDrafter(LlamaCppEngine(draft, n_seq_max=1, n_ctx=256)),
            "early-exit": lambda: EarlyExitDrafter(LlamaCppEngine(early, n_seq_max=1, n_ctx=256), 1),
        }

    return build


def _onnx(arch):
    def build(models):
        pytest.importorskip("optimum.exporters.onnx")
        from edgetts.runtimes.onnxruntime import OnnxEngine
        from edgetts.testing import tiny_onnx

        target, early, draft = tiny_onnx(models(arch, 2)), tiny_onnx(models(arch, 2), layers=1), \
            tiny_onnx(models(arch, 1, seed=1))
        return OnnxEngine(target, device="cpu", n_seq_max=4, n_ctx=256), {
            "draft-model": lambda: ModelDrafter(OnnxEngine(draft, device="cpu", n_seq_max=1, n_ctx=256)),
            "early-exit": lambda: EarlyExitDrafter(OnnxEngine(early, device="cpu", n_seq_max=1, n_ctx=256), 1),
        }

    return build


def _onnx_drafted_on_llamacpp(models):
    """An ONNX target whose draft model and first layer run on llama.cpp: drafting crosses runtimes
    (the early-exit GGUF is exported on demand from the source the ONNX manifest records)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("optimum.exporters.onnx")
    from edgetts.runtimes.llamacpp import LlamaCppEngine
    from edgetts.runtimes.onnxruntime import OnnxEngine
    from edgetts.testing import tiny_onnx

    target, draft = tiny_onnx(models("qwen2", 2)), models("qwen2", 1, seed=1, fmt="gguf")
    return OnnxEngine(target, device="cpu", n_seq_max=4, n_ctx=256), {
        "draft-model": lambda: ModelDrafter(LlamaCppEngine(draft, n_seq_max=1, n_ctx=256)),
        "early-exit": lambda: EarlyExitDrafter.for_model(target, 1, runtime="llama.cpp", n_seq_max=1, n_ctx=256),
    }


ENGINES = {
    "fake": _fake,
    "torch-qwen2": _torch("qwen2"),
    "torch-llama": _torch("llama"),
    "llamacpp-qwen2": _llamacpp("qwen2"),
    "onnx-qwen2": _onnx("qwen2"),
    "onnx-qwen2-drafted-on-llamacpp": _onnx_drafted_on_llamacpp,
}
DRAFTERS = ["ngram", "draft-model", "early-exit"]


@pytest.fixture(scope="session")
def models(model_root):
    """models(arch, n_layers, seed=0, fmt="hf", layers=None) -> a tiny checkpoint or its export."""
    from edgetts.testing import tiny_checkpoint

    def get(arch, n_layers, seed=0, fmt="hf", layers=None):
        folder = tiny_checkpoint(arch, model_root, n_layers=n_layers, seed=seed)
        if fmt == "hf":
            return folder
        from edgetts.export import export

        out = folder.parent / f"{folder.name}{f'.layers{layers}' if layers else ''}.f32.{fmt}"
        if not out.exists():
            export(folder, out, format=fmt, quant="f32", layers=layers, progress=False)
        return out

    return get


@pytest.fixture(scope="module", params=list(ENGINES))
def setup(request, models):
    target, drafters = ENGINES[request.param](models)
    drafters["ngram"] = NGramDrafter
    yield target, drafters
    target.close()


# --- lossless at temperature 0 ------------------------------------------------------------

@pytest.mark.parametrize("drafter_name", DRAFTERS)
def test_speculative_greedy_equals_plain_greedy(setup, drafter_name):
    target, drafters = setup
    drafter = drafters[drafter_name]()
    plain = generate(target, PROMPT, max_tokens=20, chat=False)
    for options in (dict(auto_off=False, adaptive=False, k=3), {}):
        spec = generate(target, PROMPT, max_tokens=20, chat=False, drafter=drafter, **options)
        assert spec.tokens == plain.tokens, (drafter_name, options)
        assert spec.text == plain.text and spec.finish_reason == plain.finish_reason
        np.testing.assert_allclose(spec.logprobs, plain.logprobs, atol=1e-3)
    assert spec.stats["drafter"] == drafter.name
    assert target.sequences() == []
    drafter.close()


def test_rejected_drafts_are_rolled_back_with_truncate():
    target, drafters = _fake(None)
    generate(target, PROMPT, max_tokens=16, drafter=drafters["draft-model"](), auto_off=False)
    assert any(c[0] == "truncate" for c in target.calls)


def test_ngram_drafts_are_accepted_on_repetitive_text():
    def copy_script(prefix):  # the target continues "abcabc..."
        logits = np.full(258, -20.0, dtype=np.float32)
        logits[97 + (prefix[-1] - 96) % 3] = 20.0  # a -> b -> c -> a
        return logits

    target = FakeEngine(script=copy_script)
    r = generate(target, "abcabcabc", max_tokens=30, drafter=NGramDrafter(), auto_off=False, k=4, adaptive=False)
    assert r.stats["acceptance_rate"] == 1.0 and r.stats["mean_accepted"] > 3
    assert r.stats["rounds"] < 12  # 30 tokens in far fewer target passes


# --- lossless at temperature > 0: the output distribution is the target's ----------------

LETTERS = [65, 66, 67]  # a three-token vocabulary: everything else has probability 0


def _small_vocab(seed: int):
    """Logits over LETTERS that depend on the last two tokens (memoised: the test draws thousands)."""
    table = {}

    def script(prefix):
        key = prefix[-2:]
        if key not in table:
            rng = np.random.default_rng([seed, *key])
            table[key] = np.full(258, -1e9, dtype=np.float32)
            table[key][LETTERS] = rng.normal(0, 1.2, 3)
        return table[key]

    return script


def _chi_square_limit(dof: int, z: float = 3.09) -> float:
    """Upper 0.1 % point of chi-square (Wilson-Hilferty), so the test fails by chance 1 time in 1000."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def _exact_joint(script, prompt: tuple[int, ...], length: int) -> dict[tuple[int, ...], float]:
    probs = {(): 1.0}
    for _ in range(length):
        nxt = {}
        for seq, p in probs.items():
            logits = script(prompt + seq).astype(np.float64)
            q = np.exp(logits - logits.max())
            q /= q.sum()
            nxt.update({seq + (t,): p * q[t] for t in LETTERS})
        probs = nxt
    return probs


@pytest.mark.parametrize("drafter_kind", ["draft-model", "ngram"])
def test_speculative_sampling_reproduces_the_target_distribution(drafter_kind):
    target_script, runs, length = _small_vocab(1), 2000, 4
    target = FakeEngine(script=target_script)
    drafter = ModelDrafter(FakeEngine(script=_small_vocab(2))) if drafter_kind == "draft-model" else NGramDrafter()
    prompt = target.tokenizer.encode("ABCAB")
    counts: dict[tuple, int] = {}
    accepted = drafted = 0
    for seed in range(runs):  # token 1 comes from the prompt pass; tokens 2-3 (and 4) from one round of 2 drafts
        r = generate(target, prompt, SamplingParams(temperature=1.0, seed=seed), max_tokens=length,
                     drafter=drafter, k=2, adaptive=False, auto_off=False, warmup=0)
        counts[tuple(r.tokens[:3])] = counts.get(tuple(r.tokens[:3]), 0) + 1
        accepted, drafted = accepted + r.stats["accepted"], drafted + r.stats["drafted"]
    exact = _exact_joint(target_script, tuple(prompt), 3)
    assert set(counts) <= set(exact)
    chi2 = sum((counts.get(s, 0) - runs * p) ** 2 / (runs * p) for s, p in exact.items())
    assert chi2 < _chi_square_limit(len(exact) - 1), chi2
    assert 0.02 * drafted < accepted < 0.9 * drafted  # both acceptance and rejection are exercised


def test_verify_at_temperature_zero_keeps_the_matching_prefix():
    rows = np.full((4, 5), -5.0)
    rows[0, 2] = rows[1, 3] = rows[2, 4] = rows[3, 1] = 5.0  # target argmax: 2, 3, 4, 1
    out = verify(rows, [2, 3, 0], [None] * 3, Sampler(), history=[1])
    assert [(t, d) for t, _, d in out] == [(2, True), (3, True), (4, False)]
    out = verify(rows, [2, 3, 4], [None] * 3, Sampler(), history=[1])
    assert [t for t, _, _ in out] == [2, 3, 4, 1]  # all kept plus the bonus token


# --- adaptive draft length and the off-switch ---------------------------------------------

def _timed_plain(policy: DraftPolicy, seconds: float = 0.010, steps: int | None = None) -> None:
    for _ in range(policy.warmup if steps is None else steps):
        policy.record_plain(seconds)


def memory_bound(width: int) -> float:
    """A target pass that costs little more for more tokens (10 ms + 1 ms per extra token)."""
    return 0.010 + 0.001 * (width - 1)


def test_draft_length_follows_predicted_speedup():
    policy = DraftPolicy(k_max=6)
    assert policy.draft_length() == 0  # warm-up: time plain decoding first
    _timed_plain(policy)
    assert policy.draft_length() == 1  # the cheapest probe
    for expected in [2, 3, 4, 5, 6, 6]:  # every draft kept: one wider per round, never past a width not timed
        k = policy.draft_length()
        policy.record_round(drafted=k, accepted=k, seconds=0.001 * k + memory_bound(k + 1))
        assert policy.k == expected
    assert policy.predicted_speedup(6) > 2.5
    lengths = []
    while policy.draft_length() and len(lengths) < 60:  # nothing kept any more: shorter drafts, then off
        k = policy.draft_length()
        lengths.append(k)
        policy.record_round(drafted=k, accepted=0, seconds=0.001 * k + memory_bound(k + 1))
    assert lengths == sorted(lengths, reverse=True) and lengths[-1] == 1
    assert policy.draft_length() == 0 and policy.switched_off == 1


def test_off_switch_needs_one_losing_round_and_skips_probes_that_cannot_win():
    policy = DraftPolicy(cooldown=4, probe_share=1.0)
    _timed_plain(policy)
    # Compute-bound target: a pass over n tokens costs n plain steps, so no acceptance can pay.
    policy.record_round(drafted=1, accepted=1, seconds=0.002 + 0.020)
    assert policy.draft_length() == 0 and policy.switched_off == 1
    _timed_plain(policy, steps=4)
    assert policy.draft_length() == 0 and policy.off_left == 8  # hopeless: the probe is skipped, the wait doubles
    assert policy.switched_off == 1  # a skipped probe is not a failed one


def test_off_switch_reprobes_a_drafter_that_could_win():
    policy = DraftPolicy(cooldown=4, probe_share=1.0)
    _timed_plain(policy)
    policy.record_round(drafted=1, accepted=0, seconds=0.005 + memory_bound(2))
    assert policy.draft_length() == 0  # nothing kept: off...
    _timed_plain(policy, steps=4)
    assert policy.draft_length() == 1  # ...but at high acceptance it would pay: probe again
    policy.record_round(drafted=1, accepted=0, seconds=0.005 + memory_bound(2))
    assert policy.off_left == 8  # the second failure doubles the cooldown


def test_each_failed_probe_lowers_the_acceptance_still_hoped_for():
    policy = DraftPolicy(cooldown=4, probe_share=1.0)
    _timed_plain(policy)
    probes = []
    for step in range(400):  # a drafter that never gets a token right, on a target where it could pay
        if policy.draft_length():
            probes.append(step)
            policy.record_round(drafted=1, accepted=0, seconds=0.005 + memory_bound(2))
        else:
            policy.record_plain(0.010)
    assert len(probes) >= 2 and probes[-1] < 64  # re-probed while a good run could pay, then given up on


def test_drafter_misses_count_at_their_own_cost():
    # An n-gram drafter that rarely finds a match still pays for its search on every miss: the
    # misses must pull the prediction down, not pass for (slower) plain steps that flatter it.
    policy = DraftPolicy()
    _timed_plain(policy)
    policy.record_round(drafted=1, accepted=1, seconds=0.011)  # a hit: two tokens for 11 ms
    assert policy.predicted_speedup(1) > 1.3
    misses = 0
    while policy.draft_length() and misses < 20:
        policy.record_round(drafted=0, accepted=0, seconds=0.013)  # misses: one token for 13 ms
        misses += 1
    assert policy.plain_s.value == 0.010 and misses < 20  # off, and plain time untouched by the misses


def test_a_costly_probe_waits_long_enough_to_pay_for_itself():
    policy = DraftPolicy(cooldown=4, probe_share=0.05)
    _timed_plain(policy)
    policy.record_catch_up(0.100)  # the drafter spent 10 plain steps catching up
    policy.record_round(drafted=1, accepted=0, seconds=0.005 + memory_bound(2))
    assert policy.switched_off == 1
    assert policy.off_left >= 0.100 / (0.05 * 0.010)  # the probe costs <= 5 % of the plain time in between


def test_plain_speed_is_re_timed_while_speculating():
    policy = DraftPolicy(k=4, refresh=10)
    _timed_plain(policy, 0.050)  # a cold first step makes speculation look good...
    for _ in range(3):
        policy.record_round(drafted=4, accepted=4, seconds=0.004 + 0.050)
    assert policy.draft_length() == 0  # ...until plain decoding is timed again
    _timed_plain(policy)
    policy.record_round(drafted=4, accepted=0, seconds=0.004 + 0.050)
    assert policy.draft_length() == 0 and policy.switched_off == 1  # 54 ms for one token vs 10 ms plain: off


def test_off_switch_keeps_a_slow_useless_drafter_near_plain_speed():
    # The switch decides from measured time (each forward pass sleeps); the cost is checked by
    # counting forward passes, which a busy machine cannot skew.
    class SlowFake(FakeEngine):
        delay = 0.004

        def _eval_batch(self, work):
            time.sleep(self.delay)
            return super()._eval_batch(work)

    def passes(fn, *engines) -> int:
        for engine in engines:
            engine.calls.clear()
        fn()
        return sum(call[0] == "eval_batch" for engine in engines for call in engine.calls)

    target = SlowFake()
    slow_drafter = ModelDrafter(SlowFake(script=lambda p: hashed_logits(p + (3,), 258)))
    slow_drafter.engine.delay = 0.008  # twice the target's step: no acceptance could make it pay
    both = (target, slow_drafter.engine)
    plain = passes(lambda: generate(target, "hi", max_tokens=60, chat=False), *both)
    spec_off = passes(lambda: generate(target, "hi", max_tokens=60, chat=False, drafter=slow_drafter), *both)
    spec_on = passes(lambda: generate(target, "hi", max_tokens=60, chat=False, drafter=slow_drafter,
                                      auto_off=False), *both)
    assert spec_on > 1.5 * plain  # speculation alone hurts...
    assert spec_off < 1.25 * plain  # ...and the switch bounds the harm
    again = generate(target, "hi", max_tokens=30, chat=False, drafter=slow_drafter)
    assert again.stats["rounds"] == 0  # the drafter's policy remembers: the next request starts switched off


# --- drafters -----------------------------------------------------------------------------

def test_lookup_drafts_what_followed_the_latest_match():
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], k=3) == [7, 1, 2]
    assert lookup([5, 6, 7], k=2) == []
    assert lookup([4, 4], k=3) == [4]


def test_incompatible_draft_model_is_refused(models):
    from edgetts.runtimes.torch import TorchEngine

    with pytest.raises(ConfigError, match="vocabulary 258 tokens vs the target's"):
        check_compatible(TorchEngine(models("qwen2", 1)), FakeEngine(), "draft")
    with pytest.raises(ConfigError, match="cannot draft for this model"):
        generate(TorchEngine(models("qwen2", 1)), "hi", max_tokens=3, drafter=ModelDrafter(FakeEngine()))


def test_torch_engine_keeps_the_first_layers(models):
    from edgetts.runtimes.torch import TorchEngine

    full = TorchEngine(models("llama", 2))
    early = TorchEngine(models("llama", 2), n_layers=1)
    same = TorchEngine(models("llama", 2), n_layers=2)
    assert (early.info.n_layers, early.info.early_exit_layers) == (1, 1)
    tokens = [1, 5, 9, 30]
    np.testing.assert_allclose(same.eval(0, tokens), full.eval(0, tokens), atol=1e-5)
    assert not np.allclose(early.eval(0, tokens), full.eval(1, tokens), atol=1e-3)
    with pytest.raises(ConfigError, match="n_layers=3"):
        TorchEngine(models("llama", 2), n_layers=3)


def test_make_drafter_spellings(models, tmp_path):
    assert make_drafter(None) is None
    assert isinstance(make_drafter("ngram"), NGramDrafter)
    assert make_drafter("early-exit:1", models("qwen2", 2)).name == "early-exit:1"
    with pytest.raises(ConfigError, match="early-exit:K"):
        make_drafter("early-exit:x", models("qwen2", 2))
    with pytest.raises(ModelNotFoundError, match="no such file"):
        make_drafter(str(tmp_path / "missing"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="--layers 2"):
        make_drafter("early-exit:2", gguf)


def test_early_exit_drafter_on_another_runtime_is_exported_in_its_format(models, monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("optimum.exporters.onnx")
    from edgetts.runner import run
    from edgetts.testing import tiny_onnx

    source = models("qwen2", 2)
    target = tiny_onnx(source)
    path, options = early_exit_artifact(target, 1, "llama.cpp")
    assert path.suffix == ".gguf" and path.parent == target.parent and options == {}
    drafted_path, options = early_exit_artifact(target, 1, "torch")
    assert drafted_path.resolve() == source.resolve() and options == {"n_layers": 1, "runtime": "torch"}
    with pytest.raises(ConfigError, match="cannot run on"):
        early_exit_artifact(target, 1, "tensorrt")
    monkeypatch.setenv("EDGETTS_CACHE", str(tmp_path))
    result = run("def add(a, b):", target, draft="early-exit:1", draft_runtime="llama.cpp", max_tokens=8, chat=False)
    assert result["stats"]["drafter"] == "early-exit:1" and result["stats"]["runtime"] == "onnxruntime"


def test_policy_state_round_trips_what_was_learned():
    policy = DraftPolicy(cooldown=4, probe_share=1.0)
    _timed_plain(policy)
    policy.record_round(drafted=1, accepted=1, seconds=0.022)  # slower than two plain steps: off
    again = DraftPolicy()
    again.restore(json.loads(json.dumps(policy.state())))
    assert again.draft_length() == 0 and again.off_left == policy.off_left
    assert again.predicted_speedup(1) == policy.predicted_speedup(1)


def test_run_remembers_the_drafter_policy_between_requests(tiny_model, monkeypatch, tmp_path):
    from edgetts.runner import run

    monkeypatch.setenv("EDGETTS_CACHE", str(tmp_path))
    model = tiny_model("qwen2")
    first = run("def add(a, b):", model, draft="ngram", max_tokens=12, chat=False)
    assert first["stats"]["rounds"] > 0  # a fresh policy probes after its warm-up
    [saved] = (tmp_path / "speculation").glob("*.json")
    state = json.loads(saved.read_text())
    saved.write_text(json.dumps(state | {"off_left": 1000}))  # as if a long cooldown were under way
    second = run("def add(a, b):", model, draft="ngram", max_tokens=12, chat=False)
    assert second["stats"]["rounds"] == 0 and second["stats"]["plain_tokens"] == 11


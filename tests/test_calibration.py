from __future__ import annotations

import copy
import itertools
import math
import random
from math import comb

import pytest
from tts_helpers import SlowEngine, answering_script, one_step_script

from edgetts.calibration import (
    N_BINS, WAVE_BINS, PlanKey, Record, Sample, accept_threshold, auroc, collect, coverage, fit, fit_coverage, load_calibration,
    load_records, pass_at_k, plan_grid, prior, save_records,
)


def synthetic(n_problems: int = 30, n: int = 8, seed: int = 0) -> list[Record]:
    """Problems whose difficulty grows with prompt length; a verifier that mostly tells right from wrong."""
    rng = random.Random(seed)
    records = []
    for i in range(n_problems):
        tokens = rng.randint(8, 30)
        p = min(max(1.1 - tokens / 30 + rng.uniform(-0.15, 0.15), 0.05), 0.95)
        samples = []
        for _ in range(n):
            ok = rng.random() < p
            answer = "42" if ok else rng.choice(["41", "43", str(rng.randint(0, 99))])
            score = min(max((0.8 if ok else 0.25) + rng.uniform(-0.2, 0.2), 0.0), 1.0)
            samples.append(Sample(answer, ok, -0.1 if ok else -0.4, 2 * tokens + rng.randint(-3, 3), {"v": score}))
        greedy_ok = p > 0.5
        records.append(Record(f"q{i}", "42", tokens, Sample("42" if greedy_ok else "41", greedy_ok, -0.1, 2 * tokens),
                              samples))
    return records


@pytest.fixture(scope="module")
def calibration():
    return fit(synthetic(), task="synthetic", model="m", temperature=0.7, verifiers=["v"], draws=16)


@pytest.mark.parametrize("n, c, k", [(10, 3, 1), (10, 3, 4), (10, 0, 5), (10, 10, 1), (16, 5, 8), (8, 2, 7)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_coverage_fit_recovers_an_exponentiated_power_law():
    a, b = -1.2, -0.6
    ks = [1, 2, 4, 8, 16]
    fa, fb = fit_coverage(ks, [math.exp(a * k ** b) for k in ks])
    assert (fa, fb) == pytest.approx((a, b), rel=1e-6)


def test_auroc_matches_pairwise_counting_with_ties():
    pos, neg = [0.9, 0.8, 0.5, 0.5], [0.5, 0.3, 0.85]
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p, q in itertools.product(pos, neg)]
    assert auroc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))


def test_accept_threshold_keeps_false_positives_under_the_cap():
    negatives = [0.1] * 90 + [0.6] * 6 + [0.95] * 4
    assert accept_threshold(negatives, 0.05) == 0.95
    assert accept_threshold([1.0] * 10, 0.05) > 1.0  # a checker that accepts wrong answers is never trusted


def test_fit_scores_every_plan_and_majority_at_full_n_is_exact(calibration):
    records = synthetic()
    assert {k.encode() for k in plan_grid(["v"], 8)} == set(calibration.plans)
    exact = 0.0
    from edgetts.strategies import choose
    for r in records:
        choice = choose("majority", [s.answer for s in r.samples], [s.mean_logprob for s in r.samples])
        exact += r.samples[choice.index].correct
    assert calibration.accuracy(PlanKey("majority", 8, 8)) == pytest.approx(exact / len(records), abs=1e-4)
    assert calibration.accuracy(PlanKey("greedy", 1, 1)) == pytest.approx(
        sum(r.greedy.correct for r in records) / len(records), abs=1e-4)


def test_a_good_verifier_beats_voting_and_single_samples(calibration):
    single = calibration.accuracy(PlanKey("single", 1, 1))
    vote = calibration.accuracy(PlanKey("majority", 8, 8))
    best = calibration.accuracy(PlanKey("best_of_n", 8, 8, "v"))
    assert single < vote < best
    assert calibration.verifiers["v"]["auroc"] > 0.9


def test_adaptive_plans_draw_fewer_waves_at_similar_accuracy(calibration):
    key = PlanKey("majority", 8, 2)
    stats = calibration.stats(key)
    assert stats.waves[0] == 1.0 and len(stats.waves) == 4 and stats.waves[-1] < 1.0
    assert calibration.accuracy(key) >= calibration.accuracy(PlanKey("majority", 8, 8)) - 0.05


def test_easy_problems_settle_the_vote_in_fewer_waves(calibration):
    key = PlanKey("majority", 8, 2)
    easy, hard = calibration.waves(key, 8), calibration.waves(key, 30)
    assert easy[0] == hard[0] == 1.0 and sum(easy) < sum(hard) - 0.5
    assert calibration.waves(key) == calibration.stats(key).waves  # no difficulty: over every problem


def test_wave_counts_are_read_between_finer_bins(calibration):
    key = PlanKey("majority", 8, 2)
    centres, curves = calibration.wave_centres, calibration.stats(key).waves_by_bin
    assert len(centres) == len(curves) == WAVE_BINS and centres == sorted(centres)
    mid = (centres[2] + centres[3]) / 2
    width = max(len(curves[2]), len(curves[3]))
    padded = [c + [0.0] * (width - len(c)) for c in (curves[2], curves[3])]
    assert calibration.waves(key, mid) == pytest.approx([(a + b) / 2 for a, b in zip(*padded)], abs=1e-4)
    assert calibration.waves(key, centres[0] - 5) == curves[0] and calibration.waves(key, 99) == curves[-1]
    old = copy.deepcopy(calibration)  # a file from before wave bins: one curve per difficulty bin
    old.wave_centres, old.stats(key).waves_by_bin = [], [[1.0], [1.0, 0.5], [1.0, 0.9]]
    assert old.waves(key, 29) == [1.0, 0.9]


def test_difficulty_bins_separate_easy_from_hard(calibration):
    key = PlanKey("majority", 4, 4)
    assert len(calibration.bin_edges) == N_BINS - 1
    assert calibration.accuracy(key, difficulty=9) > calibration.accuracy(key, difficulty=29)


def test_length_model_and_order_statistics(calibration):
    assert calibration.mean_length(20) == pytest.approx(40, abs=2)
    order = calibration.order(4)
    assert order == sorted(order) and order[0] < 1 < order[-1]
    assert len(calibration.order(5)) == 5  # sizes between the calibrated ones are interpolated


def test_coverage_is_fitted_per_task(calibration):
    cov = calibration.coverage
    assert cov["pass_at_k"] == sorted(cov["pass_at_k"]) and cov["a"] < 0
    assert math.exp(cov["a"]) == pytest.approx(cov["pass_at_k"][0], abs=0.1)


def test_calibration_round_trips_through_json(calibration, tmp_path):
    again = load_calibration(calibration.save(tmp_path / "cal.json"))
    key = PlanKey("best_of_majority", 4, 4, "v")
    assert again.accuracy(key, 12) == calibration.accuracy(key, 12)
    assert again.order(4) == calibration.order(4)


def test_a_calibration_records_how_its_samples_were_drawn(tmp_path):
    import json

    from edgetts.types import SamplingParams

    cal = fit(synthetic(3), task="t", model="m", temperature=0.7, min_p=0.2, draws=4)
    again = load_calibration(cal.save(tmp_path / "cal.json"))
    assert again.sampling(seed=5) == SamplingParams(temperature=0.7, min_p=0.2, seed=5)
    older = json.loads((tmp_path / "cal.json").read_text())
    del older["min_p"]  # written before plans sampled with min-p: they drew without it
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert load_calibration(tmp_path / "old.json").sampling().min_p == 0.0


def test_a_gain_over_the_vote_counts_only_beyond_its_noise():
    from edgetts.calibration import PlanStats, _discount_unproven_gains

    vote, lucky, steady = PlanKey("majority", 4, 4), PlanKey("best_of_n", 4, 4, "v"), PlanKey("weighted", 4, 4)
    per_problem = []
    for i in range(200):  # lucky: +2 points on average, but +-50 problem by problem; steady: +10, always
        base = float(i % 2)
        per_problem.append({vote: (base, [1]), lucky: (base + (0.52 if i % 4 < 2 else -0.48), [1]),
                            steady: (base + 0.1, [1])})
    plans = {k.encode(): PlanStats(sum(p[k][0] for p in per_problem) / 200, [0.5], [1.0]) for k in per_problem[0]}
    before = {k: s.accuracy for k, s in plans.items()}
    _discount_unproven_gains(plans, per_problem, list(per_problem[0]))
    assert plans[vote.encode()].accuracy == before[vote.encode()]
    assert before[lucky.encode()] > before[vote.encode()] and plans[lucky.encode()].accuracy == before[vote.encode()]
    assert plans[steady.encode()].accuracy == pytest.approx(before[steady.encode()])  # no noise: kept whole


def test_records_round_trip(tmp_path):
    records = synthetic(3)
    assert load_records(save_records(records, tmp_path / "r.jsonl")) == records


def test_prior_gains_are_modest_and_grow_with_n():
    cal = prior(verifiers=["v"])
    votes = [cal.accuracy(PlanKey("majority", n, n)) for n in (2, 4, 8, 16)]
    assert votes == sorted(votes) and votes[-1] - cal.accuracy(PlanKey("greedy", 1, 1)) <= 0.1
    assert cal.source == "prior"


def test_collect_draws_greedy_and_samples_through_sample_n():
    from edgetts.verifiers import CheckerVerifier

    engine = SlowEngine(delay=0.0, script=answering_script(), n_seq_max=4)
    problems = [("What is 2+2?", "4"), ("What is 3+1?", "4")]
    records = collect(engine, problems, n=6, temperature=1.0, max_tokens=20, is_correct=lambda a, t: a == t,
                      verifiers={"is4": CheckerVerifier(lambda p, text: text.strip() == "4")})
    assert len(records) == 2 and all(len(r.samples) == 6 for r in records)
    assert records[0].greedy.answer == "4" and records[0].greedy.correct
    answers = {s.answer for r in records for s in r.samples}
    assert "4" in answers and answers <= {"4", "5", "7"}
    assert all(s.scores["is4"] == float(s.correct) for r in records for s in r.samples)
    assert records[0].samples[0].length == 13  # digit and 12 spaces (EOS is not a token of the text)


def test_rescore_adds_a_verifier_to_stored_samples():
    from edgetts.calibration import rescore
    from edgetts.verifiers import CheckerVerifier

    engine = SlowEngine(delay=0.0, script=answering_script(), n_seq_max=8)
    records = collect(engine, [("What is 2+2?", "4")], n=6, temperature=1.0, max_tokens=20,
                      is_correct=lambda a, t: a == t)
    rescore(records, {"is4": CheckerVerifier(lambda p, text: text.strip() == "4")})
    assert all(s.scores["is4"] == float(s.correct) for s in records[0].samples)


def test_refresh_rescores_changed_checkers_and_their_products_but_not_model_verifiers():
    from edgetts.calibration import refresh_free_scores, rescore
    from edgetts.verifiers import CheckerVerifier, ProductVerifier

    engine = SlowEngine(delay=0.0, script=answering_script(), n_seq_max=8)
    records = collect(engine, [("What is 2+2?", "4")], n=6, temperature=1.0, max_tokens=20,
                      is_correct=lambda a, t: a == t)
    model = CheckerVerifier(lambda p, text: 0.5, name="model")
    model.generative = True  # stands in for a model verifier: its stored scores must be kept
    old = {"check": CheckerVerifier(lambda p, text: 1.0), "model": model}
    rescore(records, {**old, "both": ProductVerifier(*old.values())})
    new = {"check": CheckerVerifier(lambda p, text: float(text.strip() == "4")),
           "model": CheckerVerifier(lambda p, text: 0.9)}
    new["model"].generative = True
    refresh_free_scores(records, {**new, "both": ProductVerifier(*new.values())})
    for s in records[0].samples:
        assert s.scores["check"] == float(s.correct) and s.scores["model"] == 0.5
        assert s.scores["both"] == 0.5 * float(s.correct)


def test_a_task_difficulty_feature_replaces_prompt_tokens():
    records = synthetic(20)
    for r in records:  # a feature that tracks answer length exactly: length = 2 * tokens (+-3)
        r.difficulty, r.prompt_tokens = 2.0 * r.prompt_tokens, 5
    cal = fit(records, task="t", model="m", temperature=0.7, draws=4)
    assert cal.mean_length(40) == pytest.approx(40, abs=2)
    assert cal.bin_edges and min(cal.bin_edges) > 5


def test_the_shipped_embedded_calibration_loads():
    from edgetts.session import _shipped_calibration

    cal = _shipped_calibration()
    assert cal is not None and cal.source == "fitted" and cal.n_problems >= 100
    assert cal.accuracy(PlanKey("best_of_n", 16, 16, "steps")) > cal.accuracy(PlanKey("greedy", 1, 1))


def test_lengths_that_grow_faster_than_difficulty_follow_a_power_law():
    records = synthetic(20)
    for r in records:  # length = difficulty^1.5: a straight line misses both ends
        r.difficulty = float(r.prompt_tokens)
        for s in r.samples + [r.greedy]:
            s.length = round(r.prompt_tokens ** 1.5)
    cal = fit(records, task="t", model="m", temperature=0.7, draws=4)
    assert cal.mean_length(9) == pytest.approx(27, rel=0.02) and cal.mean_length(25) == pytest.approx(125, rel=0.02)
    assert cal.mean_length(9, greedy=True) == pytest.approx(27, rel=0.02)
    assert prior().mean_length(9) == 40.0  # priors (and older files) keep the straight line


def test_collect_draws_samples_with_the_step_checker_and_counts_the_rewound_steps():
    from edgetts.arithmetic import first_wrong_step
    from edgetts.testing import FakeEngine

    prompt = "hi"
    engine = FakeEngine(script=one_step_script(len(FakeEngine().tokenizer.encode(prompt))))
    kwargs = dict(n=8, temperature=1.0, max_tokens=20, is_correct=lambda a, t: a == t, seed=1)
    repaired = collect(engine, [(prompt, "2")], repair=first_wrong_step, **kwargs)[0]
    plain = collect(engine, [(prompt, "2")], **kwargs)[0]
    assert all(s.correct for s in repaired.samples) and not all(s.correct for s in plain.samples)
    assert max(s.length for s in repaired.samples) > 6 == max(s.length for s in plain.samples)  # "1+1=2," + rewinds
    assert fit([repaired], task="t", model="m", temperature=1.0, draws=2, repair=True).repair


def test_batch_lengths_are_predicted_per_difficulty_bin():
    records = synthetic(30, n=8)
    spread = random.Random(3)
    for r in records:  # easy problems: every sample as long; hard ones: lengths spread +-60 %
        for s in r.samples:
            s.length = 2 * r.prompt_tokens if r.prompt_tokens < 16 else round(2 * r.prompt_tokens * spread.uniform(0.4, 1.6))
    cal = fit(records, task="t", model="m", temperature=0.7, draws=4)
    easy, hard = cal.order(8, 9), cal.order(8, 30)
    assert easy[-1] == pytest.approx(easy[0], rel=0.25) and hard[-1] > 1.3 * hard[0]
    assert cal.order(8) == cal.order_stats["8"] and len(cal.order(5, 30)) == 5
    assert cal.greedy_ratio(9) == pytest.approx(1.0, abs=0.25) and cal.greedy_ratio() == 1.0

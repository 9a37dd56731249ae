from __future__ import annotations

import math

import pytest

from edgetts.strategies import (
    aggregate, beta_confidence, best_of_majority, best_of_n, choose, extract_answer, majority, should_stop,
    single, vote_decided, weighted, weighted_best_of_n,
)
from edgetts.types import Completion


def completion(text: str, mean_logprob: float = -0.5) -> Completion:
    return Completion(text=text, tokens=[1, 2], logprobs=[mean_logprob, mean_logprob], finish_reason="stop")


@pytest.mark.parametrize("text, expected", [
    ("37*48=1776, 1776+15=1791\nAnswer: 1791", "1791"),
    ("Answer: 1,791 and then 12 more words 99", "1791"),
    ("no answer line, last number 42", "42"),
    ("Answer: -7", "-7"),
    ("nothing here", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_single_takes_the_first_sample():
    assert single(["3", "4", "4"]).answer == "3"


def test_majority_is_the_plurality_and_ties_break_by_probability():
    assert majority(["3", "4", "4", None]).answer == "4"
    # 1-1 tie: the more probable sample wins
    assert majority(["3", "4"], logprobs=[-2.0, -0.1]).answer == "4"
    assert majority(["3", "4"], logprobs=[-0.1, -2.0]).answer == "3"


def test_weighted_vote_can_overturn_a_count_majority():
    answers = ["5", "5", "6"]
    logprobs = [math.log(0.1), math.log(0.1), math.log(0.9)]
    assert majority(answers, logprobs).answer == "5"
    assert weighted(answers, logprobs).answer == "6"


def test_best_of_n_takes_the_top_score_and_skips_samples_without_answers():
    assert best_of_n(["1", None, "3"], scores=[0.2, 0.99, 0.5]).answer == "3"
    assert best_of_n([None, None], scores=[0.2, 0.3]).answer is None


def test_weighted_best_of_n_sums_scores_per_answer():
    answers = ["7", "8", "8"]
    scores = [0.9, 0.5, 0.5]
    assert best_of_n(answers, scores=scores).answer == "7"
    assert weighted_best_of_n(answers, scores=scores).answer == "8"


def test_best_of_majority_ignores_a_rare_high_scored_answer():
    answers = ["1"] * 4 + ["2"] * 4 + ["9"]
    scores = [0.6] * 4 + [0.7] * 4 + [0.99]
    assert best_of_n(answers, scores=scores).answer == "9"
    assert best_of_majority(answers, scores=scores, min_share=0.2).answer == "2"


def test_selectors_need_one_score_per_sample():
    with pytest.raises(ValueError, match="one verifier score per sample"):
        best_of_n(["1", "2"], scores=[0.5])


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="majority"):
        choose("mode", ["1"])


def test_aggregate_points_at_the_completion_to_show():
    done = [completion("Answer: 3"), completion("Answer: 4", -0.1), completion("Answer: 4", -0.9)]
    choice = aggregate("majority", done)
    assert choice.answer == "4" and choice.index == 1 and choice.support == pytest.approx(2 / 3)


def test_vote_decided_when_the_lead_exceeds_what_remains():
    assert vote_decided(["4", "4", "4"], remaining=2)
    assert not vote_decided(["4", "4", "5"], remaining=1)


@pytest.mark.parametrize("v1, v2, stops", [(4, 0, True), (6, 1, True), (8, 2, True), (9, 3, True),
                                            (3, 0, False), (5, 2, False)])
def test_beta_rule_matches_the_adaptive_consistency_thresholds(v1, v2, stops):
    assert (beta_confidence(v1, v2) >= 0.95) is stops


def test_beta_confidence_closed_form():
    assert beta_confidence(3, 0) == pytest.approx(0.9375)
    assert beta_confidence(4, 0) == pytest.approx(0.96875)


def test_should_stop_reasons():
    assert should_stop(["4"] * 4, remaining=10) == "beta"
    assert should_stop(["4", "4"], remaining=1) == "decided"
    assert should_stop(["4", "5"], remaining=6) is None
    assert should_stop(["4", "5"], remaining=6, scores=[0.2, 1.0], accept=1.0) == "verified"
    assert should_stop(["4", "5"], remaining=0) == "exhausted"


# --- verifiers ------------------------------------------------------------------------------------

def _judge_script(n_vocab: int = 258):
    """P(Y) high when the candidate text holds '4', low otherwise; 'Y'/'N' are the answer tokens."""
    import numpy as np

    def script(prefix):
        out = np.zeros(n_vocab, dtype=np.float32)
        out[ord("Y")] = 3.0 if ord("4") in prefix else -1.0
        return out
    return script


def test_generative_verifier_scores_a_batch_in_one_pass():
    from edgetts.testing import FakeEngine
    from edgetts.verifiers import GenerativeVerifier

    engine = FakeEngine(script=_judge_script(), n_seq_max=8)
    verifier = GenerativeVerifier(engine, prefix="Q: {prompt}\n", suffix="A: {candidate}\nOK?", yes="Y", no="N")
    scores = verifier.score("What is 2+2?", ["Answer: 4", "Answer: 5", "Answer: 4"])
    assert scores[0] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert scores[1] == pytest.approx(1 / (1 + math.exp(1.0)))
    assert scores[0] == scores[2]
    evals = [c for c in engine.calls if c[0] == "eval_batch"]
    assert len(evals) == 2  # the shared prefix once, then every candidate in one batch
    assert len(evals[1][1]) == 3 and sum(c[0] == "fork" for c in engine.calls) == 3
    assert engine.sequences() == []  # everything released


def test_generative_verifier_chunks_when_candidates_exceed_free_sequences():
    from edgetts.testing import FakeEngine
    from edgetts.verifiers import GenerativeVerifier

    engine = FakeEngine(script=_judge_script(), n_seq_max=3)
    verifier = GenerativeVerifier(engine, yes="Y", no="N")
    scores = verifier.score("q", ["4", "5", "4", "5", "4"])
    assert [s > 0.5 for s in scores] == [True, False, True, False, True]


def test_generative_verifier_rejects_multi_token_answer_words():
    from edgetts.testing import FakeEngine
    from edgetts.verifiers import GenerativeVerifier

    with pytest.raises(ValueError, match="one token each"):
        GenerativeVerifier(FakeEngine(), yes=" yes", no=" no")


def test_checker_verifier_wraps_any_callable():
    from edgetts.verifiers import CheckerVerifier

    verifier = CheckerVerifier(lambda prompt, text: text.endswith("4"))
    assert verifier.score("What is 2+2?", ["Answer: 4", "Answer: 5"]) == [1.0, 0.0]


def test_generative_verifier_batched_scores_match_one_at_a_time_on_the_torch_engine(tiny_model):
    from edgetts.runtimes import load
    from edgetts.verifiers import GenerativeVerifier

    engine = load(tiny_model("llama"), runtime="torch", n_seq_max=8)
    verifier = GenerativeVerifier(engine, prefix="{prompt}", suffix="{candidate}\nAnswer: ", yes="1", no="0")
    candidates = ["\n2+2=4\nAnswer: 4", "\n2+2=5\nAnswer: 5", "\n2*2=4, 4+0=4\nAnswer: 4"]
    batched = verifier.score("What is 2+2?", candidates)
    alone = [verifier.score("What is 2+2?", [c])[0] for c in candidates]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) == 3 and engine.sequences() == []


def test_checker_ties_are_broken_by_votes():
    answers = ["3", "4", "4", "5", "5", "5"]
    passed = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert best_of_n(answers, scores=passed).answer == "4"  # majority among the verified samples
    assert weighted_best_of_n(answers, scores=[0.0] * 6).answer == "5"  # nothing verified: majority
    assert best_of_n(answers, scores=[0.0] * 6).answer == "5"


def test_product_verifier_needs_every_part_to_pass():
    from edgetts.verifiers import CheckerVerifier, ProductVerifier

    both = ProductVerifier(CheckerVerifier(lambda p, t: "4" in t), CheckerVerifier(lambda p, t: 0.5))
    assert both.score("q", ["4", "5"]) == [0.5, 0.0] and not both.generative

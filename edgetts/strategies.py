"""Test-time scaling as pure functions: extract answers, aggregate samples, decide when to stop.

Everything here works on plain lists (completions, answers, verifier scores), so the same code
aggregates a live request, replays calibration samples and runs in tests without an engine.

Strategies (see RESEARCH.md §1):

| name              | picks                                                         | needs scores |
|-------------------|---------------------------------------------------------------|--------------|
| single            | the first sample (greedy when drawn at temperature 0)         | no           |
| majority          | the most frequent answer; ties by summed probability          | no           |
| weighted          | answer with the largest sum of exp(mean token logprob)        | no           |
| best_of_n         | the answer of the top-scored sample                           | yes          |
| weighted_best_of_n| answer with the largest sum of verifier scores                | yes          |
| best_of_majority  | among answers seen >= `min_share` of the time, the top-scored | yes          |
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgetts.errors import choice_error
from edgetts.types import Completion

Extractor = Callable[[str], "str | None"]

_ANSWER = re.compile(r"Answer:\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """The final answer in `text`: the number after "Answer:", else the last number, else None.

    Commas are dropped ("1,791" and "1791" vote together). Pass your own extractor wherever an
    `extract=` argument is taken to aggregate other kinds of answers.
    """
    match = _ANSWER.search(text)
    if match is None:
        numbers = _NUMBER.findall(text)
        if not numbers:
            return None
        raw = numbers[-1]
    else:
        raw = match.group(1)
    return raw.replace(",", "")


@dataclass(frozen=True)
class Choice:
    """What an aggregation picked: the answer, the sample that carries it, and how sure it is."""

    answer: str | None
    index: int  # the completion whose text is shown (-1 when there was none)
    support: float  # share of the aggregation weight behind the answer, in [0, 1]


NO_CHOICE = Choice(answer=None, index=-1, support=0.0)


def answers_of(completions: Sequence[Completion], extract: Extractor = extract_answer) -> list[str | None]:
    return [extract(c.text) for c in completions]


def _pick(answers: Sequence[str | None], weights: Sequence[float], tiebreak: Sequence[float]) -> Choice:
    """The answer with the largest total weight (then tiebreak); None answers never win."""
    totals: dict[str, float] = {}
    breaks: dict[str, float] = {}
    best_index: dict[str, int] = {}
    for i, (answer, weight, tb) in enumerate(zip(answers, weights, tiebreak)):
        if answer is None:
            continue
        totals[answer] = totals.get(answer, 0.0) + weight
        breaks[answer] = breaks.get(answer, 0.0) + tb
        if answer not in best_index or tb > tiebreak[best_index[answer]]:
            best_index[answer] = i
    if not totals:
        return NO_CHOICE
    winner = max(totals, key=lambda a: (totals[a], breaks[a]))
    mass = sum(totals.values())
    return Choice(winner, best_index[winner], totals[winner] / mass if mass > 0 else 0.0)


def single(answers, logprobs=None, scores=None) -> Choice:
    if not answers:
        return NO_CHOICE
    return Choice(answers[0], 0, 1.0 if answers[0] is not None else 0.0)


def majority(answers, logprobs=None, scores=None) -> Choice:
    """Self-consistency: plurality vote, ties broken by summed probability."""
    probs = [math.exp(lp) for lp in logprobs] if logprobs is not None else [0.0] * len(answers)
    return _pick(answers, [1.0] * len(answers), probs)


def weighted(answers, logprobs=None, scores=None) -> Choice:
    """Probability-weighted vote (RPC): weight = exp(mean token logprob)."""
    if logprobs is None:
        return majority(answers)
    probs = [math.exp(lp) for lp in logprobs]
    return _pick(answers, probs, [1.0] * len(answers))


def best_of_n(answers, logprobs=None, scores=None) -> Choice:
    """The answer of the highest-scored sample (samples with no answer never win). Samples tied at
    the top score (a pass/fail checker passes several) vote among themselves."""
    scores = _need_scores(scores, answers, "best_of_n")
    scored = [scores[i] for i, a in enumerate(answers) if a is not None]
    if not scored:
        return NO_CHOICE
    best = max(scored)
    tied = [a if a is not None and scores[i] >= best - 1e-9 else None for i, a in enumerate(answers)]
    choice = _pick(tied, [1.0] * len(answers), [0.0] * len(answers))
    return Choice(choice.answer, choice.index, float(best))


def weighted_best_of_n(answers, logprobs=None, scores=None) -> Choice:
    """Sum verifier scores per distinct answer: robust to one over-confident wrong score. Equal sums
    (e.g. no sample passed a checker) are broken by how many samples gave the answer."""
    scores = _need_scores(scores, answers, "weighted_best_of_n")
    return _pick(answers, list(scores), [1.0] * len(answers))


def best_of_majority(answers, logprobs=None, scores=None, min_share: float = 0.2) -> Choice:
    """Keep answers seen at least `min_share` of the time, then take the top-scored among them."""
    scores = _need_scores(scores, answers, "best_of_majority")
    seen = [a for a in answers if a is not None]
    if not seen:
        return NO_CHOICE
    floor = max(1, math.ceil(min_share * len(seen)))
    frequent = {a for a in set(seen) if seen.count(a) >= floor} or set(seen)
    keep = [a if a in frequent else None for a in answers]
    return best_of_n(keep, logprobs, scores)


def _need_scores(scores, answers, name: str) -> Sequence[float]:
    if scores is None or len(scores) != len(answers):
        got = "none" if scores is None else f"{len(scores)} for {len(answers)} samples"
        raise ValueError(f"{name} needs one verifier score per sample (got {got}); pass a verifier or pick "
                         "majority/weighted")
    return scores


STRATEGIES: dict[str, Callable[..., Choice]] = {
    "single": single,
    "majority": majority,
    "weighted": weighted,
    "best_of_n": best_of_n,
    "weighted_best_of_n": weighted_best_of_n,
    "best_of_majority": best_of_majority,
}
NEEDS_SCORES = frozenset({"best_of_n", "weighted_best_of_n", "best_of_majority"})


def choose(strategy: str, answers: Sequence[str | None], logprobs: Sequence[float] | None = None,
           scores: Sequence[float] | None = None) -> Choice:
    """Apply `strategy` to answers (+ mean logprobs, + verifier scores)."""
    if strategy not in STRATEGIES:
        raise choice_error("strategy", strategy, STRATEGIES)
    return STRATEGIES[strategy](list(answers), logprobs, scores)


def aggregate(strategy: str, completions: Sequence[Completion], scores: Sequence[float] | None = None,
              extract: Extractor = extract_answer) -> Choice:
    """Pick an answer from completions; `Choice.index` points at the completion to show."""
    return choose(strategy, answers_of(completions, extract), [c.mean_logprob for c in completions], scores)


# --- adaptive stopping (RESEARCH.md §1.5) ----------------------------------------------------

def top_two(answers: Sequence[str | None]) -> tuple[int, int]:
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    ordered = sorted(counts.values(), reverse=True) + [0, 0]
    return ordered[0], ordered[1]


def vote_decided(answers: Sequence[str | None], remaining: int) -> bool:
    """No number of further samples can change the plurality winner."""
    first, second = top_two(answers)
    return first > 0 and first - second > remaining


def beta_confidence(v1: int, v2: int) -> float:
    """P(Beta(v1+1, v2+1) > 1/2) = P(Binomial(v1+v2+1, 1/2) <= v1): is the leader truly ahead?"""
    n = v1 + v2 + 1
    return sum(math.comb(n, i) for i in range(v1 + 1)) / 2**n


def should_stop(answers: Sequence[str | None], remaining: int, threshold: float = 0.95,
                scores: Sequence[float] | None = None, accept: float | None = None) -> str | None:
    """Why to stop drawing samples now ("decided", "beta", "verified"), or None to continue.

    `accept`: a verifier score at or above which one sample is trusted (a checker with low FPR).
    """
    if remaining <= 0:
        return "exhausted"
    if vote_decided(answers, remaining):
        return "decided"
    if beta_confidence(*top_two(answers)) >= threshold:
        return "beta"
    if accept is not None and scores is not None:
        if any(s >= accept and a is not None for s, a in zip(scores, answers)):
            return "verified"
    return None

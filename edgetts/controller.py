"""The budget-aware controller: plan test-time scaling from measured latency, run it, log it.

    plan   = argmax over calibrated plans of expected accuracy, s.t. worst-case latency <= budget
    cost   = profile (prefill, decode step at batch n, verifier) x calibration (answer lengths)
    run    = waves of samples with adaptive stopping and a deadline guard: an answer is always
             returned by the budget, from whatever has finished
    log    = one JSONL line per request: features, plan, predicted vs actual latency, outcome

See RESEARCH.md §1.5 (stopping), §2.2 (latency model), §2.3 (online updates), §2.4 (guard).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgetts.calibration import N_GRID, Calibration, PlanKey
from edgetts.errors import ConfigError
from edgetts.profile import DeviceProfile, cache_dir, save_profile
from edgetts.strategies import NEEDS_SCORES, Choice, aggregate, extract_answer, should_stop
from edgetts.types import Completion, SamplingParams
from edgetts.verifiers import Verifier

GUARD_MARGIN_S = 0.010  # kept for aggregation, and for a step that the OS preempts on a busy machine
GUARD_SHARE = 0.05  # ... but no more than this share of the budget: 10 ms is a fifth of a 45 ms budget
DEFAULT_MAX_TOKENS = 256
DECISION_ALPHA = 0.25  # moving-average weight of the newest decision time
TIE_BAND = 0.005  # plans within half a point of accuracy are ranked by their worst case
WAVE_SEED_STRIDE = 100_003  # a seeded request's later waves draw apart from its first


@dataclass(frozen=True)
class Plan:
    key: PlanKey
    max_tokens: int
    temperature: float
    min_p: float
    draft: bool
    expected_accuracy: float
    predicted_s: float  # expected latency (adaptive plans: averaged over how many waves they draw)
    worst_s: float  # every wave drawn
    repair: bool = False  # samples are drawn with step repair

    @property
    def name(self) -> str:
        return self.key.name + ("+repair" if self.repair else "") + (" +draft" if self.draft else "")

    def to_dict(self) -> dict:
        return {"name": self.name, "strategy": self.key.strategy, "n": self.key.n, "wave": self.key.wave,
                "verifier": self.key.verifier or None, "draft": self.draft, "repair": self.repair,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature, "min_p": self.min_p, "expected_accuracy": round(self.expected_accuracy, 4),
                "predicted_s": round(self.predicted_s, 4), "worst_s": round(self.worst_s, 4)}


@dataclass
class Answer:
    answer: str | None
    text: str
    plan: Plan
    explanation: str
    predicted_latency_s: float
    latency_s: float
    samples: int = 0
    waves: int = 0
    stop_reason: str = ""
    truncated: bool = False  # the guard cut generation short
    decision_ms: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"answer": self.answer, "text": self.text, "plan": self.plan.to_dict(),
                "explanation": self.explanation, "predicted_latency_s": round(self.predicted_latency_s, 4),
                "latency_s": round(self.latency_s, 4), "samples": self.samples, "waves": self.waves,
                "stop_reason": self.stop_reason, "truncated": self.truncated,
                "decision_ms": round(self.decision_ms, 3)}


# --- cost model -------------------------------------------------------------------------------

class CostModel:
    """Predicted seconds of a plan for a prompt, from the device profile and the answer lengths."""

    def __init__(self, profile: DeviceProfile, calibration: Calibration, generative: frozenset[str] = frozenset()):
        self.profile, self.calibration, self.generative = profile, calibration, generative
        self._cache: dict[tuple, tuple[float, float, float]] = {}

    def decode_s(self, lengths: list[float]) -> float:
        """Decode time of one batch whose samples end after `lengths` tokens (live ones step together)."""
        total, done = 0.0, 0.0
        ordered = sorted(lengths)
        for j, length in enumerate(ordered):
            total += max(length - done, 0.0) * self.profile.step_s(len(ordered) - j)
            done = max(done, length)
        return total

    def wave_s(self, prompt_tokens: int, key: PlanKey, max_tokens: int, draft: bool = False,
               difficulty: float | None = None) -> float:
        """Seconds of one wave (prefill, batched decode, verifier), with the online corrections."""
        difficulty = prompt_tokens if difficulty is None else difficulty
        prefill, decode, verify = self._parts(prompt_tokens, difficulty, key.strategy == "greedy", key.wave,
                                              key.verifier in self.generative, max_tokens, draft)
        p = self.profile
        return prefill * p.scale("prefill") + decode * p.scale("decode") + verify * p.scale("verifier")

    def _parts(self, prompt_tokens: int, difficulty: float, greedy: bool, wave: int, generative: bool,
               max_tokens: int, draft: bool) -> tuple[float, float, float]:
        """Uncorrected seconds of a wave's parts, cached: a request re-plans from the cache in microseconds."""
        # the per-batch decode corrections change the curve's shape, so they key the cache too
        signature = (prompt_tokens, difficulty, greedy, wave, generative, max_tokens, draft,
                     tuple(self.profile.decode_by_batch))
        if signature not in self._cache:
            cal, p = self.calibration, self.profile
            mean = cal.mean_length(difficulty, greedy=greedy)
            ratios = [cal.greedy_ratio(difficulty)] if greedy else cal.order(wave, difficulty)
            lengths = [min(q * mean, max_tokens) for q in ratios]
            decode = self.decode_s(lengths) / p.scale("decode")
            if draft and p.draft_speedup:
                decode /= p.draft_speedup
            verify = p.verify_s(wave) / p.scale("verifier") if generative else 0.0
            self._cache[signature] = (p.prefill_s(prompt_tokens) / p.scale("prefill"), decode, verify)
        return self._cache[signature]

    def finish_share(self, prompt_tokens: int, key: PlanKey, room: float, max_tokens: int,
                     difficulty: float) -> float:
        """Share of a wave's samples expected to finish within `room` seconds while the whole wave
        decodes together (the guard cuts the rest): the calibration's order statistics of 16 sample
        lengths at this difficulty, read as quantiles of one sample's length. Greedy's length has no
        spread in the calibration, so the feasibility check alone decides it."""
        if key.strategy == "greedy":
            return 1.0
        p = self.profile
        prefill, _, verify = self._parts(prompt_tokens, difficulty, False, key.wave,
                                         key.verifier in self.generative, max_tokens, False)
        steps = (room - prefill * p.scale("prefill") - verify * p.scale("verifier")) / p.step_s(key.wave)
        mean = self.calibration.mean_length(difficulty)
        quantiles = self.calibration.order(16, difficulty)
        return sum(min(q * mean, max_tokens) <= steps for q in quantiles) / len(quantiles)

    def worst_s(self, prompt_tokens: int, key: PlanKey, max_tokens: int, draft: bool = False,
                difficulty: float | None = None) -> float:
        """Seconds with every wave drawn."""
        return self.wave_s(prompt_tokens, key, max_tokens, draft, difficulty) * key.waves_max

    def predict(self, prompt_tokens: int, key: PlanKey, waves: list[float], max_tokens: int,
                draft: bool = False, difficulty: float | None = None) -> tuple[float, float]:
        """(expected seconds, worst-case seconds with every wave drawn); the guard's
        margin is not in either: it is time kept free, not spent."""
        one = self.wave_s(prompt_tokens, key, max_tokens, draft, difficulty)
        return one * sum(waves[:key.waves_max]), self.worst_s(prompt_tokens, key, max_tokens, draft, difficulty)


def guard_margin(budget: float) -> float:
    """Seconds the deadline guard keeps free at the end of a request of this budget."""
    return min(GUARD_MARGIN_S, GUARD_SHARE * budget)


# --- the controller -----------------------------------------------------------------------------

class Controller:
    """Plans and answers requests on one generator engine, with optional verifiers and a drafter."""

    def __init__(self, engine, profile: DeviceProfile, calibration: Calibration,
                 verifiers: Mapping[str, Verifier] | None = None, *, drafter=None, extract=extract_answer,
                 log_path: str | Path | None = None, profile_path: str | Path | None = None,
                 seed: int | None = None, difficulty=None, repair=None):
        self.engine, self.profile, self.calibration = engine, profile, calibration
        self.verifiers = dict(verifiers or {})
        self.drafter, self.extract = drafter, extract
        self.difficulty = difficulty  # prompt -> the task feature calibration used (None: prompt tokens)
        # samples are drawn as calibration drew them: with step repair only if it did (it sets the lengths)
        self.repair = repair if calibration.repair else None
        generative = frozenset(n for n, v in self.verifiers.items() if getattr(v, "generative", True))
        self.cost = CostModel(profile, calibration, generative)
        self.log_path = Path(log_path) if log_path else cache_dir() / "decisions.jsonl"
        self.profile_path = Path(profile_path) if profile_path else None
        self.rng = random.Random(seed)
        self._decision_s = 0.0  # moving average of the time from request to plan (tokenizing + planning)
        self._keys = [k for k in calibration.keys() if self._usable(k)]

    def warm_up(self) -> None:
        """A tiny request's worth of work, so that the first real request does not spend its budget on
        imports, the engine's thread pool and the sampler's set-up (measured through `edgetts run`:
        the first request took 1.4x its prediction without it; see README)."""
        from edgetts.generate import prompt_tokens, sample_n

        ids = prompt_tokens(self.engine.tokenizer, "1")
        sample_n(self.engine, ids, 2, self.calibration.sampling(seed=0), 2, repair=self.repair)
        self.plan(len(ids), 1.0)

    def _usable(self, key: PlanKey) -> bool:
        return (not key.verifier or key.verifier in self.verifiers) and key.wave <= self.engine.info.n_seq_max

    # planning ---------------------------------------------------------------------------
    def plan(self, prompt_tokens: int, budget: float, max_tokens: int | None = None,
             difficulty: float | None = None) -> Plan:
        """The most accurate calibrated plan whose worst-case predicted latency fits `budget`.

        `difficulty`: the task's feature for this request (default: prompt tokens), which sets the
        predicted answer length and the difficulty bin whose accuracies apply.
        """
        if budget <= 0:
            raise ConfigError(f"budget={budget!r} is invalid: give seconds > 0 (e.g. 2 or 0.5)")
        cap = self._max_tokens(max_tokens)
        difficulty = prompt_tokens if difficulty is None else difficulty
        room = budget - guard_margin(budget)
        fitting, top = [], -1.0
        # most accurate first: a plan's calibrated accuracy bounds what it can expect here (the guard's
        # cuts only lower it), so once the bound falls below the tie band of the best found, none can win
        for bound, key in sorted(((self.calibration.accuracy(k, difficulty), k) for k in self._keys),
                                 key=lambda entry: -entry[0]):
            if bound < top - TIE_BAND:
                break
            # the worst case (every wave drawn) next: most plans do not fit small budgets, and
            # building one costs more than this check
            if self.cost.worst_s(prompt_tokens, key, cap, self._drafts(key), difficulty) > room:
                continue
            fitting.append(self._evaluate(key, prompt_tokens, cap, difficulty, room))
            top = max(top, fitting[-1].expected_accuracy)
        # within half a point of the most accurate, the lowest worst case: a request is bounded by its
        # worst case, and a one-shot plan is also the more predictable
        best = min((p for p in fitting if p.expected_accuracy >= top - TIE_BAND),
                   key=lambda p: (p.worst_s, p.predicted_s), default=None)
        best = best or self._fallback(prompt_tokens, room, cap, difficulty)
        # the deadline guard ends the request by budget - margin whatever the plan would have taken
        return replace(best, predicted_s=min(best.predicted_s, room))

    def _drafts(self, key: PlanKey) -> bool:
        return key.n == 1 and (self.profile.draft_speedup or 0) > 1.05 and self.drafter is not None

    def _evaluate(self, key: PlanKey, prompt_tokens: int, cap: int, difficulty: float,
                  room: float | None = None) -> Plan:
        """The plan of `key` for this request; with `room`, its accuracy counts the samples the
        guard would cut by then."""
        draft = self._drafts(key)
        waves = self.calibration.waves(key, difficulty)
        expected, worst = self.cost.predict(prompt_tokens, key, waves, cap, draft, difficulty)
        sampling = self.calibration.sampling() if key.strategy != "greedy" else SamplingParams()
        accuracy = self.calibration.accuracy(key, difficulty)
        if room is not None:
            share = self.cost.finish_share(prompt_tokens, key, room, cap, difficulty)
            accuracy = self._accuracy_when_cut(key, share, accuracy, difficulty)
        return Plan(key, cap, sampling.temperature, sampling.min_p, draft, accuracy, expected, worst,
                    repair=self.repair is not None and key.strategy != "greedy" and not draft)

    def _accuracy_when_cut(self, key: PlanKey, share: float, full: float, difficulty: float) -> float:
        """Expected accuracy when each sample of the first wave finishes with probability `share`: the
        vote runs over the k that finish (k ~ Binomial(wave, share)); with none, no answer."""
        if share >= 1.0:
            return full
        n = key.wave
        return sum(math.comb(n, k) * share ** k * (1 - share) ** (n - k)
                   * (full if k == n else self._vote_accuracy(k, difficulty)) for k in range(1, n + 1))

    def _vote_accuracy(self, k: int, difficulty: float) -> float:
        """Calibrated accuracy of a plain vote of k samples (the largest calibrated vote size up to k)."""
        size = max(m for m in N_GRID if m <= k)
        key = PlanKey("single", 1, 1) if size == 1 else PlanKey("majority", size, size)
        return self.calibration.accuracy(key, difficulty) if self.calibration.stats(key) else 0.0

    def _fallback(self, prompt_tokens: int, room: float, cap: int, difficulty: float) -> Plan:
        """Nothing fits: greedy with max tokens cut to what `room` seconds can decode (as the guard would)."""
        greedy = self._evaluate(PlanKey("greedy", 1, 1), prompt_tokens, cap, difficulty)
        decodable = (room - self.profile.prefill_s(prompt_tokens)) / self.profile.step_s(1)
        tokens = max(1, min(cap, int(decodable)))
        return self._evaluate(greedy.key, prompt_tokens, tokens, difficulty) if tokens < cap else greedy

    def _max_tokens(self, user_cap: int | None) -> int:
        lengths = self.calibration.lengths
        observed = lengths.get("max")
        natural = int(observed * 1.5) + 8 if observed else DEFAULT_MAX_TOKENS
        if observed and observed >= lengths.get("cap", float("inf")):
            natural = int(lengths["cap"])  # calibration samples hit their cap: longer ones were never seen
        return min(user_cap or natural, natural)

    def explain(self, plan: Plan, budget: float, difficulty: float | None) -> str:
        greedy = self.calibration.accuracy(PlanKey("greedy", 1, 1), difficulty)
        stop = f", stopping early when the vote is settled (waves of {plan.key.wave})" if plan.key.adaptive else ""
        return (f"{plan.name}: expected accuracy {plan.expected_accuracy:.0%} (greedy {greedy:.0%}), predicted "
                f"{plan.predicted_s:.2f}s (worst {plan.worst_s:.2f}s) of the {budget:.2f}s budget{stop}")

    # running ----------------------------------------------------------------------------
    def solve(self, prompt: str, budget: float, max_tokens: int | None = None, truth: str | None = None,
              seed: int | None = None) -> Answer:
        """Plan, run within `budget` seconds from now, log the decision, return the answer.

        `seed` makes the request's draws reproducible: its k-th wave of n samples draws with seed
        `seed + n + WAVE_SEED_STRIDE * k` (default: the controller's own random stream)."""
        from edgetts.generate import prompt_tokens

        start = time.monotonic()
        ids = prompt_tokens(self.engine.tokenizer, prompt)
        difficulty = self.difficulty(prompt) if self.difficulty else len(ids)
        # plan for the time left once this decision is made: the guard's deadline counts from `start`
        left = budget - (time.monotonic() - start) - self._decision_s
        plan = self.plan(len(ids), max(left, budget * 0.5), max_tokens, difficulty)
        decided = time.monotonic()
        self._decision_s += DECISION_ALPHA * ((decided - start) - self._decision_s)
        run = _Execution(self, plan, prompt, ids, deadline=start + budget, difficulty=difficulty,
                         margin=guard_margin(budget), seed=seed)
        run.go()
        answer = run.answer(budget, start, (decided - start) * 1e3)
        self._log(answer, budget, len(ids), difficulty, truth)
        if self.profile_path:
            save_profile(self.profile, self.profile_path)
        return answer

    def observe_wave(self, n_prompt: int, completions: list[Completion], seconds: float) -> None:
        """Fold one batch of samples (prompt prefill + decode) into the online profile: compare its time
        with the prediction for the lengths that really came out (samples cut by the guard count with
        the tokens they reached). Call it for any `sample_n` done on this engine."""
        predicted = self.profile.prefill_s(n_prompt) + self.cost.decode_s([c.decode_steps for c in completions])
        self.profile.observe("decode", predicted, seconds, batch=len(completions))

    def _log(self, answer: Answer, budget: float, n_prompt: int, difficulty: float, truth: str | None) -> None:
        entry = {"time": time.time(), "features": {"prompt_tokens": n_prompt, "difficulty": difficulty,
                                                   "difficulty_bin": self.calibration.bin_of(difficulty)},
                 "budget_s": budget, **answer.to_dict(),
                 "outcome": None if truth is None else answer.answer == truth,
                 "profile_log_ratio": dict(self.profile.log_ratio)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")


class _Execution:
    """One plan running against a deadline: waves, stopping rules, verifier, guard."""

    def __init__(self, controller: Controller, plan: Plan, prompt: str, ids: list[int], deadline: float,
                 difficulty: float | None = None, margin: float = GUARD_MARGIN_S, seed: int | None = None):
        self.c, self.plan, self.prompt, self.ids, self.deadline = controller, plan, prompt, ids, deadline
        self.margin, self.seed = margin, seed
        self.difficulty = difficulty
        self.completions: list[Completion] = []
        self.scores: list[float] = []
        self.verified = True  # every drawn sample has a score
        self.waves = 0
        self.stop_reason = ""

    def go(self) -> None:
        key = self.plan.key
        while len(self.completions) < key.n:
            size = min(key.wave, key.n - len(self.completions))
            if self.waves and not self._wave_fits(size):
                self.stop_reason = "guard"
                return
            self._draw(size)
            if self.stop_reason == "guard":
                return
            reason = self._stop_rule()
            if reason:
                self.stop_reason = reason
                return
        self.stop_reason = self.stop_reason or "complete"

    def _wave_fits(self, size: int) -> bool:
        wave = PlanKey(self.plan.key.strategy, size, size, self.plan.key.verifier)
        need = self.c.cost.wave_s(len(self.ids), wave, self.plan.max_tokens, difficulty=self.difficulty)
        return time.monotonic() + need + self.margin <= self.deadline

    def _draw(self, size: int) -> None:
        from edgetts.generate import sample_n

        seed = self.c.rng.randrange(2**31) if self.seed is None else self.seed + size + WAVE_SEED_STRIDE * self.waves
        params = SamplingParams(temperature=self.plan.temperature, min_p=self.plan.min_p, seed=seed)
        began = time.monotonic()
        # stop decoding one (predicted) step early: sample_n checks the deadline before each step
        stop_at = self.deadline - self.margin - self._verify_reserve(size) - self.c.profile.step_s(size)
        if self.plan.draft:
            new = [self._draw_speculative(params, stop_at)]
        else:
            new = sample_n(self.c.engine, self.ids, size, params, self.plan.max_tokens, deadline=stop_at,
                           repair=self.c.repair if self.plan.repair else None)
        self.c.observe_wave(len(self.ids), new, time.monotonic() - began)
        self.completions += new
        self.waves += 1
        if any(c.finish_reason == "deadline" for c in new):
            self.stop_reason = "guard"
        self._score(new)

    def _draw_speculative(self, params: SamplingParams, stop_at: float) -> Completion:
        """One sample through the drafter, cut at the deadline like sample_n does."""
        from edgetts.generate import stream_generate

        began, parts, tokens, logprobs, reason = time.monotonic(), [], [], [], "length"
        for step in stream_generate(self.c.engine, self.ids, params, self.plan.max_tokens, drafter=self.c.drafter):
            parts.append(step.text)
            if step.token is not None:
                tokens.append(step.token)
                logprobs.append(step.logprob)
            if step.finish_reason:
                reason = step.finish_reason
                break
            if time.monotonic() >= stop_at:
                reason = "deadline"
                break
        return Completion("".join(parts), tokens, logprobs, reason, time.monotonic() - began)

    def _verify_reserve(self, size: int) -> float:
        name = self.plan.key.verifier
        return self.c.profile.verify_s(size) if name in self.c.cost.generative else 0.0

    def _score(self, new: list[Completion]) -> None:
        name = self.plan.key.verifier
        if not name or not self.verified:
            return
        verifier = self.c.verifiers[name]
        predicted = self._verify_reserve(len(new))
        if time.monotonic() + predicted + self.margin > self.deadline:
            self.verified = False  # no time to verify: fall back to the weighted vote
            return
        began = time.monotonic()
        self.scores += verifier.score(self.prompt, [c.text for c in new])
        if predicted > 0:
            self.c.profile.observe("verifier", predicted, time.monotonic() - began)

    def _stop_rule(self) -> str | None:
        remaining = self.plan.key.n - len(self.completions)
        if remaining <= 0 or self.plan.key.n == 1:
            return None
        answers = [self.c.extract(c.text) for c in self.completions]
        accept = self.c.calibration.verifiers.get(self.plan.key.verifier, {}).get("accept_threshold")
        scores = self.scores if self.verified and self.plan.key.verifier else None
        return should_stop(answers, remaining, scores=scores, accept=accept)

    def choice(self) -> tuple[Choice, str]:
        strategy = self.plan.key.strategy
        if strategy == "greedy":
            strategy = "single"
        if strategy in NEEDS_SCORES and not (self.verified and len(self.scores) == len(self.completions)):
            strategy = "weighted"
        scores = self.scores if strategy in NEEDS_SCORES else None
        return aggregate(strategy, self.completions, scores, extract=self.c.extract), strategy

    def answer(self, budget: float, start: float, decision_ms: float) -> Answer:
        choice, used = self.choice()
        text = self.completions[choice.index].text if choice.index >= 0 else ""
        latency = time.monotonic() - start
        explanation = self.c.explain(self.plan, budget, self.difficulty)
        if used != self.plan.key.strategy and self.plan.key.strategy != "greedy":
            explanation += f"; verifier skipped by the deadline guard, used {used}"
        truncated = any(c.finish_reason == "deadline" for c in self.completions)
        predicted = decision_ms / 1e3 + self.plan.predicted_s  # the decision's time is known by now
        return Answer(choice.answer, text, self.plan, explanation, predicted, latency,
                      samples=len(self.completions), waves=self.waves, stop_reason=self.stop_reason,
                      truncated=truncated, decision_ms=decision_ms, extra={"support": choice.support})


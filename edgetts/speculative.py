"""Speculative decoding on the `Engine` contract: a drafter proposes, the target verifies.

Verification is lossless. At temperature 0 the longest prefix of drafts that matches the target's
argmax is kept, then the target's own token; the output equals plain greedy decoding. At
temperature > 0, standard speculative rejection sampling (Leviathan et al.; Chen et al.): draft x
with drafter distribution q is kept with probability min(1, p(x)/q(x)); at the first rejection a
token is drawn from norm(max(0, p - q)); if every draft is kept, a bonus token is drawn from the
target. p and q are post-sampler distributions (same temperature, top-k/p, min-p, penalty), so
the output distribution is exactly the target's.

`DraftPolicy` picks the draft length from a cost model fitted to the timings of this run (draft
step, target pass per width, acceptance) and switches speculation off while the model predicts
it slower than plain decoding, re-probing after a cooldown only while it could still pay.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgetts.engine import Engine
from edgetts.errors import ConfigError
from edgetts.sampling import Sampler, draw


class RecentMedian:
    """The median of the last `size` timings: one slow spell on a shared machine does not move it,
    a device that stays slower does after a few steps, and, unlike a minimum, it does not
    favour whatever was timed most often."""

    def __init__(self, size: int = 5, samples=()):
        self.samples: deque[float] = deque(samples, maxlen=size)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)

    @property
    def value(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one target pass commits with k drafts at per-token acceptance a: (1 - a^(k+1)) / (1 - a)."""
    return k + 1.0 if acceptance >= 1.0 else (1 - acceptance ** (k + 1)) / (1 - acceptance)


class DraftPolicy:
    """How many tokens to draft next (0 = a plain step), from a cost model fitted to this run's timings.

    A round of k drafts commits E(k) = (1 - a^(k+1)) / (1 - a) tokens at per-token acceptance a
    (RESEARCH.md 3.1) and takes T(k) seconds: k draft steps plus one target pass over k + 1
    tokens, with whatever each costs on this device (a compute-bound pass that grows with its
    width, two models evicting each other from the cache, Python overhead). The policy times T(k)
    for each k it drafts and T(0) = a plain step (the median of the last five of each), and reads
    T between and beyond those points off straight lines through its neighbours. Predicted
    speedup: E(k) * T(0) / T(k). Acceptance is counted per token, recent rounds weighted most,
    from a prior of `prior_acceptance`. Rounds where the drafter had nothing to offer (an n-gram
    miss) commit one token at their own timed cost and enter the prediction at the rate they happen.

    - Draft length: the k with the best predicted speedup, at most one longer than any timed so
      far (the model is trusted only next to where it was measured). It starts at 1, the cheapest probe.
    - Off-switch: the first `warmup` steps are plain, to time them (six: the first decode steps
      after a prefill run up to 1.9x slower on llama.cpp, and the median of the last five drops
      the slowest). While the best prediction is below `margin`, speculation stops for a cooldown
      of plain tokens: `cooldown`, doubled after each failed probe, and long enough that a failed
      probe (the drafter catching up on skipped text plus its losing rounds) costs at most
      `probe_share` of the plain time in between. At the end of a cooldown the probe is skipped
      unless acceptance 0.9 would win by 10 % at the costs measured (a drafter this device cannot
      make pay); each failed probe in a row lowers that hope (0.81, 0.73, ...). Every `refresh` speculative tokens, `warmup` plain steps re-time T(0) from
      scratch, so a stale baseline (a cold first step, a busier machine) cannot keep a losing
      drafter on.

    A drafter keeps its policy across generations (`policy_for`), so what was learned on this
    device (draft length, costs, a switched-off drafter's cooldown) carries over to the next request.
    """

    DECAY = 0.95  # weight of older rounds in the acceptance count: about the last twenty rounds matter
    HOPEFUL_ACCEPTANCE, HOPEFUL_GAIN = 0.9, 1.1  # re-probe only where a good run would clearly pay

    def __init__(self, k: int = 1, k_min: int = 1, k_max: int = 8, adaptive: bool = True, auto_off: bool = True,
                 warmup: int = 6, cooldown: int = 32, margin: float = 0.97, refresh: int = 64,
                 probe_share: float = 0.03, prior_acceptance: float = 0.6):
        if not 1 <= k_min <= k <= k_max:
            raise ConfigError(f"draft lengths k_min={k_min}, k={k}, k_max={k_max} are invalid: need 1 <= k_min <= k <= k_max")
        if not 0.0 <= prior_acceptance < 1.0:
            raise ConfigError(f"prior_acceptance={prior_acceptance} is invalid: need 0 <= prior_acceptance < 1")
        self.k, self.k_min, self.k_max = k, k_min, k_max
        self.adaptive, self.auto_off, self.margin = adaptive, auto_off, margin
        self.warmup, self.cooldown, self.refresh, self.probe_share = warmup, cooldown, refresh, probe_share
        self.plain_s, self.round_s = RecentMedian(), {}  # round_s: drafts per round -> RecentMedian of its seconds
        self.kept, self.missed = 2 * prior_acceptance, 2 * (1 - prior_acceptance)
        self.miss_s, self.hits, self.misses = RecentMedian(), 1.0, 0.0  # rounds where the drafter had nothing
        self.off_left, self.since_plain, self.failures, self.probe_cost = warmup, 0, 0, 0.0
        self.start_generation()

    # what to do next ---------------------------------------------------------------------------
    def draft_length(self) -> int:
        return 0 if self.off_left > 0 else self.k

    @property
    def acceptance(self) -> float:
        return self.kept / (self.kept + self.missed)

    def predicted_speedup(self, k: int, acceptance: float | None = None) -> float | None:
        """Speedup of drafting k tokens over plain decoding; None until both have been timed."""
        seconds = self.round_seconds(k)
        if seconds is None:
            return None
        a = self.acceptance if acceptance is None else acceptance
        m = self.misses / (self.hits + self.misses)  # a miss commits one token, in a round of its own cost
        miss_seconds = self.miss_s.value or self.plain_s.value
        tokens = (1 - m) * expected_tokens(a, k) + m
        return tokens * self.plain_s.value / ((1 - m) * seconds + m * miss_seconds)

    def round_seconds(self, k: int) -> float | None:
        """T(k): timed, or on the line through the nearest timed rounds (T(0) is a plain step)."""
        if self.plain_s.value is None or not self.round_s:
            return None
        points = [(0, self.plain_s.value)] + sorted((n, e.value) for n, e in self.round_s.items())
        below = [p for p in points if p[0] <= k][-2:]  # extrapolation uses the last two
        above = [p for p in points if p[0] > k][:1]
        (k0, t0), (k1, t1) = (below[-1], above[0]) if above else below
        return t0 + max(t1 - t0, 0.0) * (k - k0) / (k1 - k0) if k1 != k0 else t0

    def _best(self, acceptance: float | None = None, k_max: int | None = None) -> tuple[int, float | None]:
        ks = range(self.k_min, (k_max or self.k_max) + 1)
        scored = [(s, k) for k in ks if (s := self.predicted_speedup(k, acceptance)) is not None]
        if not scored:
            return self.k, None
        speedup, k = max(scored)
        return k, speedup

    # what was measured -------------------------------------------------------------------------
    def record_plain(self, seconds: float) -> None:
        self.plain_s.add(seconds)
        self.plain_tokens += 1
        self.since_plain = 0
        if self.off_left > 0:
            self.off_left -= 1
            if self.off_left == 0 and self.auto_off and not self._worth_probing():
                self._switch_off(probe_failed=False)

    def record_catch_up(self, seconds: float) -> None:
        """The drafter caught up on text it skipped while off: part of what a probe costs."""
        self.probe_cost += seconds
        self.spec_seconds += seconds

    def record_round(self, drafted: int, accepted: int, seconds: float) -> None:
        """One round: `drafted` drafts (0: the drafter had none), `accepted` of them kept, `seconds` in all."""
        committed = accepted + 1
        self.rounds += 1
        self.spec_tokens += committed
        self.spec_seconds += seconds
        self.since_plain += committed
        self.hits, self.misses = self.DECAY * self.hits + bool(drafted), self.DECAY * self.misses + (not drafted)
        if not drafted:  # nothing to draft (an n-gram miss): a plain pass plus the drafter's search
            self.miss_s.add(seconds)
        else:
            self.drafted += drafted
            self.accepted += accepted
            self.kept = self.DECAY * self.kept + accepted
            self.missed = self.DECAY * self.missed + (accepted < drafted)
            self.round_s.setdefault(drafted, RecentMedian()).add(seconds)
        if self.plain_s.value is not None:
            self.probe_cost += seconds - committed * self.plain_s.value
        self._choose()
        if self.auto_off and self.since_plain >= self.refresh and self.off_left == 0:
            self.off_left, self.plain_s = self.warmup, RecentMedian()  # re-time plain decoding from scratch

    def _choose(self) -> None:
        k, speedup = self._best(k_max=min(self.k_max, max(self.round_s, default=0) + 1))
        if speedup is None:
            return
        if self.adaptive:
            self.k = k
        if not self.auto_off:
            return
        if speedup < self.margin:
            self._switch_off(probe_failed=True)
        else:
            self.failures, self.probe_cost = 0, 0.0

    def _worth_probing(self) -> bool:
        # each failed probe in a row lowers the acceptance still hoped for: 0.9, 0.81, 0.73, ...
        hoped = max(self.acceptance, self.HOPEFUL_ACCEPTANCE ** max(self.failures, 1))
        _, hopeful = self._best(acceptance=hoped)
        return hopeful is None or hopeful >= self.HOPEFUL_GAIN * self.margin

    def _switch_off(self, probe_failed: bool) -> None:
        self.failures += 1
        self.switched_off += probe_failed
        plain = self.plain_s.value or 0.0
        payback = self.probe_cost / (self.probe_share * plain) if plain and self.probe_cost > 0 else 0
        self.off_left = max(self.cooldown * 2 ** (self.failures - 1), int(payback))
        self.k, self.probe_cost = self.k_min, 0.0

    # what carries over to the next process ----------------------------------------------------
    def state(self) -> dict:
        """What was learned on this device, as JSON-ready data (`restore` reads it back)."""
        return dict(k=self.k, plain=list(self.plain_s.samples), kept=self.kept, missed=self.missed,
                    rounds={str(k): list(r.samples) for k, r in self.round_s.items()},
                    miss=list(self.miss_s.samples), hits=self.hits, misses=self.misses,
                    off_left=self.off_left, failures=self.failures)

    def restore(self, state: dict) -> None:
        """Continue from `state()` of an earlier policy: no warm-up when plain decoding is already timed."""
        self.k = min(max(int(state["k"]), self.k_min), self.k_max)
        self.plain_s = RecentMedian(samples=state["plain"])
        self.round_s = {int(k): RecentMedian(samples=v) for k, v in state["rounds"].items()}
        self.kept, self.missed = float(state["kept"]), float(state["missed"])
        self.miss_s = RecentMedian(samples=state["miss"])
        self.hits, self.misses = float(state["hits"]), float(state["misses"])
        self.off_left, self.failures = int(state["off_left"]), int(state["failures"])

    # reporting ---------------------------------------------------------------------------------
    def start_generation(self) -> None:
        """Zero the per-generation counters; keep what was learned (k, costs, acceptance, cooldown)."""
        self.rounds = self.drafted = self.accepted = self.spec_tokens = self.plain_tokens = self.switched_off = 0
        self.spec_seconds = 0.0

    def stats(self) -> dict:
        _, predicted = self._best()
        return dict(
            acceptance_rate=round(self.accepted / self.drafted, 4) if self.drafted else None,
            mean_accepted=round(self.accepted / self.rounds, 3) if self.rounds else None,
            rounds=self.rounds, drafted=self.drafted, accepted=self.accepted,
            speculative_tokens=self.spec_tokens, plain_tokens=self.plain_tokens,
            draft_length=self.k, switched_off=self.switched_off,
            plain_tok_s=round(1 / self.plain_s.value, 2) if self.plain_s.value else None,
            speculative_tok_s=round(self.spec_tokens / self.spec_seconds, 2) if self.spec_seconds else None,
            predicted_speedup=round(predicted, 3) if predicted is not None else None,
        )


def policy_for(drafter, **options) -> DraftPolicy:
    """The drafter's own policy (created on first use); explicit options give a fresh one instead."""
    if options:
        return DraftPolicy(**options)
    if getattr(drafter, "policy", None) is None:
        drafter.policy = DraftPolicy()
    return drafter.policy


def policy_file(*key: str) -> Path:
    """Where the policy for one (model, drafter, settings) on this device is kept between processes."""
    from edgetts.profile import cache_dir

    return cache_dir() / "speculation" / f"{hashlib.sha1('|'.join(key).encode()).hexdigest()[:16]}.json"


def remembered_policy(path: Path) -> DraftPolicy:
    """The policy an earlier request saved at `path`; a fresh one if there is none (or it is unreadable:
    it is only a cache of timings)."""
    policy = DraftPolicy()
    try:
        policy.restore(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        policy = DraftPolicy()
    return policy


def remember_policy(policy: DraftPolicy, path: Path) -> None:
    from edgetts.export.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(policy.state()))


def verify(rows: np.ndarray, drafts: Sequence[int], qs: Sequence[np.ndarray | None], sampler: Sampler,
           history: Sequence[int]) -> list[tuple[int, float, bool]]:
    """Target logits rows (len(drafts)+1) -> the committed tokens: kept drafts, then one target token.

    Returns (token, logprob under the target, from_draft) for each committed token.
    """
    history = list(history)
    out = []
    for j, draft in enumerate(drafts):
        kept, token = _judge(rows[j], draft, qs[j], sampler, history)
        out.append((token, sampler.logprob(rows[j], token, history), kept))
        if not kept:
            return out
        history.append(token)
    token, logprob = sampler(rows[len(drafts)], history)
    out.append((token, logprob, False))
    return out


def _judge(row: np.ndarray, draft: int, q: np.ndarray | None, sampler: Sampler, history) -> tuple[bool, int]:
    """(kept, token): the draft itself if kept, else the target's replacement."""
    if sampler.params.greedy:
        target = sampler.argmax(row, history)
        return target == draft, target
    p = sampler.probs(row, history)
    q_draft = 1.0 if q is None else q[draft]
    if sampler.rng.random() * q_draft < p[draft]:  # accept with probability min(1, p/q)
        return True, draft
    residual = np.maximum(p - (_one_hot(draft, p.shape[0]) if q is None else q), 0.0)
    return False, draw(residual if residual.sum() > 0 else p, sampler.rng)


def _one_hot(token: int, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float64)
    out[token] = 1.0
    return out


def speculative_generate_step(target: Engine, drafter, prompt: Sequence[int], sampler: Sampler, seq: int = 0,
                              limit: int | None = None, policy: DraftPolicy | None = None, **policy_options
                              ) -> Iterator[tuple[int, float, bool]]:
    """Yield (token, logprob, from_draft) forever, like `generate_step`, drafting with `drafter`.

    The target's KV for `seq` always holds every committed token but the last (pending) one;
    rejected drafts are rolled back with `truncate`. Pass a `policy` to read its stats afterwards.
    """
    policy = policy if policy is not None else policy_for(drafter, **policy_options)
    policy.start_generation()
    drafter.attach(target)
    history = list(prompt)
    target.release(seq)
    try:
        token, logprob = sampler(target.eval(seq, history)[-1], history)
        history.append(token)
        yield token, logprob, False
        behind = True  # the drafter has not seen the latest tokens (at the start, and after plain steps)
        while True:
            k = _draft_budget(target, seq, policy.draft_length(), limit, len(history) - len(prompt))
            if not k:  # a plain step, as lean as generate_step's: speculation off costs nothing extra
                start = time.perf_counter()
                token, logprob = sampler(target.eval(seq, history[-1:])[-1], history)
                policy.record_plain(time.perf_counter() - start)
                behind = True
                history.append(token)
                yield token, logprob, False
                continue
            if behind:
                start = time.perf_counter()
                drafter.prepare(history)
                policy.record_catch_up(time.perf_counter() - start)
                behind = False
            start = time.perf_counter()
            drafts, qs = drafter.propose(history, k, sampler)
            committed = _round(target, seq, history, drafts, qs, sampler)
            policy.record_round(len(drafts), len(committed) - 1, time.perf_counter() - start)
            for item in committed:
                history.append(item[0])
                yield item
    finally:
        target.release(seq)
        drafter.reset()


def _draft_budget(target: Engine, seq: int, k: int, limit: int | None, generated: int) -> int:
    """Cap the draft by the context left (the pending token needs a slot) and the tokens still wanted."""
    room = target.info.n_ctx - target.n_tokens(seq) - 1
    wanted = k if limit is None else min(k, limit - generated - 1)
    return max(0, min(wanted, room))


def _round(target, seq, history, drafts, qs, sampler) -> list[tuple[int, float, bool]]:
    """One target pass over the pending token and the drafts; roll back what was rejected."""
    held = target.n_tokens(seq)
    rows = target.eval(seq, [history[-1], *drafts])
    committed = verify(rows, drafts, qs, sampler, history)
    target.truncate(seq, held + len(committed))  # pending + kept drafts; the last committed token is the new pending
    return committed

"""Speculative decoding on the `Engine` contract: a drafter proposes, the target verifies.

Verification is lossless. At temperature 0 the longest prefix of drafts that matches the target's
argmax is kept, then the target's own token; the output equals plain greedy decoding. At
temperature > 0, standard speculative rejection sampling (Leviathan et al.; Chen et al.): draft x
with drafter distribution q is kept with probability min(1, p(x)/q(x)); at the first rejection a
token is drawn from norm(max(0, p - q)); if every draft is kept, a bonus token is drawn from the
target. p and q are post-sampler distributions (same temperature, top-k/p, min-p, penalty), so
the output distribution is exactly the target's.

`DraftPolicy` adapts the draft length to the measured acceptance rate and switches speculation
off while it is slower than plain decoding (re-probing after a cooldown that doubles each time).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from edgetts.engine import Engine
from edgetts.errors import ConfigError
from edgetts.sampling import Sampler, draw


class Ewma:
    """Exponentially weighted moving average; None until the first sample."""

    def __init__(self, weight: float = 0.25):
        self.weight, self.value = weight, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else (1 - self.weight) * self.value + self.weight * x


class Window:
    """Seconds per committed token over the last `size` rounds: sums, because rounds commit 1..k+1 tokens."""

    def __init__(self, size: int = 8):
        self.rounds: deque[tuple[float, int]] = deque(maxlen=size)

    def add(self, seconds: float, committed: int) -> None:
        self.rounds.append((seconds, committed))

    @property
    def value(self) -> float | None:
        if not self.rounds:
            return None
        return sum(s for s, _ in self.rounds) / sum(c for _, c in self.rounds)


class DraftPolicy:
    """How many tokens to draft next (0 = a plain step), from what was measured so far.

    - Draft length: the onnxruntime-genai rule: acceptance EWMA < 50 % shortens the draft by one,
      >= 75 % lengthens it, within [k_min, k_max]. It starts at 1, the cheapest probe.
    - Off-switch: the first `warmup` steps are plain, to time plain decoding. After `probe_rounds`
      speculative rounds, whenever seconds per committed token (over the last 8 rounds) exceed
      plain decoding's by more than `margin` (timing noise must not switch off a useful drafter), speculation
      stops for `cooldown` plain tokens (doubling after each failed probe), then is probed again
      at the shortest draft length, the cheapest probe. Every `refresh` speculative tokens, `warmup`
      plain steps re-time plain decoding, so a stale baseline (a cold first step, a busier machine)
      cannot keep a losing drafter on.

    A drafter keeps its policy across generations (`policy_for`), so what was learned on this
    device (draft length, a switched-off drafter's cooldown) carries over to the next request.
    """

    def __init__(self, k: int = 1, k_min: int = 1, k_max: int = 8, adaptive: bool = True, auto_off: bool = True,
                 warmup: int = 2, probe_rounds: int = 1, cooldown: int = 32, margin: float = 1.05,
                 refresh: int = 48):
        if not 1 <= k_min <= k <= k_max:
            raise ConfigError(f"draft lengths k_min={k_min}, k={k}, k_max={k_max} are invalid: need 1 <= k_min <= k <= k_max")
        self.k, self.k_min, self.k_max = k, k_min, k_max
        self.adaptive, self.auto_off = adaptive, auto_off
        self.probe_rounds, self.cooldown, self.margin = probe_rounds, cooldown, margin
        self.warmup, self.refresh, self.since_plain, self.refreshing = warmup, refresh, 0, False
        self.plain_s, self.spec_s, self.acceptance = Ewma(), Window(), Ewma()
        self.off_left = warmup if auto_off else 0
        self.failures = self.probe = 0
        self.rounds = self.drafted = self.accepted = self.spec_tokens = self.plain_tokens = self.switched_off = 0

    def draft_length(self) -> int:
        return 0 if self.off_left > 0 else self.k

    def record_plain(self, seconds: float) -> None:
        self.plain_s.add(seconds)
        self.plain_tokens += 1
        self.since_plain = 0
        if self.off_left > 0:
            self.off_left -= 1
            if self.off_left == 0 and not self.refreshing:  # start a fresh probe of speculation
                self.spec_s, self.probe = Window(), 0
            self.refreshing = self.refreshing and self.off_left > 0

    def record_round(self, drafted: int, accepted: int, seconds: float) -> None:
        committed = accepted + 1
        self.spec_s.add(seconds, committed)
        self.rounds += 1
        self.probe += 1
        self.spec_tokens += committed
        self.since_plain += committed
        if self.auto_off and self.since_plain >= self.refresh:  # re-time plain decoding
            self.off_left, self.refreshing, self.plain_s = self.warmup, True, Ewma()
        if drafted:
            self.drafted += drafted
            self.accepted += accepted
            self.acceptance.add(accepted / drafted)
            self._adapt_length()
        self._maybe_switch_off()

    def _adapt_length(self) -> None:
        if not self.adaptive:
            return
        if self.acceptance.value < 0.5:
            self.k = max(self.k_min, self.k - 1)
        elif self.acceptance.value >= 0.75:
            self.k = min(self.k_max, self.k + 1)

    def _maybe_switch_off(self) -> None:
        if not self.auto_off or self.probe < self.probe_rounds or self.plain_s.value is None:
            return
        if self.spec_s.value > self.margin * self.plain_s.value:
            self.failures += 1
            self.switched_off += 1
            self.off_left, self.refreshing = self.cooldown * 2 ** (self.failures - 1), False
            self.k = self.k_min
        else:
            self.failures = 0

    def start_generation(self) -> None:
        """Zero the per-generation counters; keep what was learned (k, speeds, cooldown)."""
        self.rounds = self.drafted = self.accepted = self.spec_tokens = self.plain_tokens = self.switched_off = 0

    def stats(self) -> dict:
        rate = lambda s: round(1 / s.value, 2) if s.value else None  # noqa: E731
        return dict(
            acceptance_rate=round(self.accepted / self.drafted, 4) if self.drafted else None,
            mean_accepted=round(self.accepted / self.rounds, 3) if self.rounds else None,
            rounds=self.rounds, drafted=self.drafted, accepted=self.accepted,
            speculative_tokens=self.spec_tokens, plain_tokens=self.plain_tokens,
            draft_length=self.k, switched_off=self.switched_off,
            plain_tok_s=rate(self.plain_s), speculative_tok_s=rate(self.spec_s),
        )


def policy_for(drafter, **options) -> DraftPolicy:
    """The drafter's own policy (created on first use); explicit options give a fresh one instead."""
    if options:
        return DraftPolicy(**options)
    if getattr(drafter, "policy", None) is None:
        drafter.policy = DraftPolicy()
    return drafter.policy


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
            if k and behind:
                drafter.prepare(history)  # catch up outside the timed round: a probe is judged on its rounds
            behind = not k
            start = time.perf_counter()
            drafts, qs = drafter.propose(history, k, sampler) if k else ([], [])
            committed = _round(target, seq, history, drafts, qs, sampler)
            if k:
                policy.record_round(len(drafts), len(committed) - 1, time.perf_counter() - start)
            else:
                policy.record_plain(time.perf_counter() - start)
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

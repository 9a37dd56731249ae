"""Turning logits into tokens: small pure functions composed into a sampler.

Each `apply_*` takes a row of logits and returns new logits (filtered entries become -inf); each
checks its own argument and names the bad value. `Sampler` chains them in the usual order
(repetition penalty, temperature, top-k, top-p, min-p) and draws with its own seeded generator.

The sampler exposes the *distribution* it draws from (`Sampler.probs`), not only a token: lossless
speculative sampling compares the target's and the drafter's post-filter distributions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgetts.errors import ConfigError
from edgetts.types import SamplingParams

NEG_INF = -np.inf


def _require(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {rule}")


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """CTRL's penalty: tokens already seen get logit/penalty when positive, logit*penalty when negative."""
    _require(penalty > 0, "repetition_penalty", penalty, "must be > 0 (1 turns it off)")
    if penalty == 1 or len(history) == 0:
        return logits
    seen = np.unique(np.asarray(history, dtype=np.int64))
    seen = seen[seen < logits.shape[-1]]
    out = logits.copy()
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    _require(temperature > 0, "temperature", temperature, "must be > 0 here (0 means argmax, handled by the sampler)")
    return logits / temperature


def apply_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits."""
    _require(isinstance(k, (int, np.integer)) and k >= 0, "top_k", k, "must be an integer >= 0 (0 turns it off)")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, NEG_INF)


def apply_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus sampling)."""
    _require(0 < p <= 1, "top_p", p, "must be in (0, 1] (1 turns it off)")
    if p == 1:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = _softmax(logits[order])
    # a token stays if the mass strictly before it is below p: the top token always stays
    keep_sorted = (np.cumsum(probs) - probs) < p
    keep = np.zeros(logits.shape, dtype=bool)
    keep[order[keep_sorted]] = True
    return np.where(keep, logits, NEG_INF)


def apply_min_p(logits: np.ndarray, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is at least min_p times the top token's."""
    _require(0 <= min_p < 1, "min_p", min_p, "must be in [0, 1) (0 turns it off)")
    if min_p == 0:
        return logits
    threshold = logits.max() + np.log(min_p)
    return np.where(logits >= threshold, logits, NEG_INF)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max()
    return logits - top - np.log(np.exp(logits - top).sum())


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from `probs` by inverse CDF: exactly one uniform per draw, so seeds replay exactly."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(probs) - 1))


class Sampler:
    """Logits -> token, with the composed filters of `params` and a generator seeded by `params.seed`.

    `probs` returns the distribution tokens are drawn from (one-hot at temperature 0);
    `logprob` the model's log-probability of a token (temperature 0 reports the unfiltered
    softmax, so greedy outputs still carry a confidence for probability-weighted voting).
    """

    def __init__(self, params: SamplingParams | None = None, seed: int | None = None):
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed if seed is None else seed)

    def filtered_logits(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        p = self.params
        logits = apply_repetition_penalty(np.asarray(logits), history, p.repetition_penalty)
        if p.greedy:  # argmax needs no float64 copy (vocabularies of 150k make copies show up per token)
            return logits
        logits = apply_temperature(logits.astype(np.float64), p.temperature)
        logits = apply_top_k(logits, p.top_k)
        logits = apply_top_p(logits, p.top_p)
        return apply_min_p(logits, p.min_p)

    def argmax(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        """The most likely token after the repetition penalty (what temperature 0 picks)."""
        return int(np.argmax(apply_repetition_penalty(np.asarray(logits), history, self.params.repetition_penalty)))

    def probs(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        filtered = self.filtered_logits(logits, history)
        if self.params.greedy:
            one_hot = np.zeros(filtered.shape, dtype=np.float64)
            one_hot[int(np.argmax(filtered))] = 1.0
            return one_hot
        return _softmax(filtered)

    def logprob(self, logits: np.ndarray, token: int, history: Sequence[int] = ()) -> float:
        return float(log_softmax(self.filtered_logits(logits, history))[token])

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[int, float]:
        """(token, logprob) for one row of logits."""
        filtered = self.filtered_logits(logits, history)
        token = int(np.argmax(filtered)) if self.params.greedy else draw(_softmax(filtered), self.rng)
        return token, float(log_softmax(filtered)[token])


def make_sampler(temperature: float = 0.0, top_p: float = 1.0, min_p: float = 0.0, top_k: int = 0,
                 repetition_penalty: float = 1.0, seed: int | None = None) -> Sampler:
    """A `Sampler` from keyword options (SamplingParams checks each one)."""
    return Sampler(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  repetition_penalty=repetition_penalty, seed=seed))


def sample_seeds(params: SamplingParams, n: int) -> list[int | None]:
    """Seeds for n samples: seed, seed+1, ... so sample i replays as one generation with seed+i."""
    if params.seed is None:
        return [None] * n
    return [params.seed + i for i in range(n)]

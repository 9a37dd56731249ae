"""Verifiers score candidate solutions in [0, 1]; strategies turn the scores into a choice.

- `CheckerVerifier`: any callable `(prompt, solution) -> bool | float` (a unit test, a step checker).
- `GenerativeVerifier`: an `Engine` that reads the problem and a candidate and is asked a yes/no
  question; the score is P("yes"). N candidates are scored in one batched pass: the shared problem
  prefix is prefilled once, forked into N sequences, and each sequence prefills only its candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from edgetts.engine import Engine
from edgetts.errors import ConfigError


@runtime_checkable
class Verifier(Protocol):
    name: str

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        """One score in [0, 1] per candidate; higher means more likely correct."""


class CheckerVerifier:
    """Wrap a programmatic checker: `check(prompt, solution)` returns a bool or a score."""

    generative = False  # costs no model time: the planner treats it as free

    def __init__(self, check: Callable[[str, str], bool | float], name: str = "checker"):
        self.check = check
        self.name = name
        self.last_seconds = 0.0

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        start = time.perf_counter()
        scores = [float(self.check(prompt, c)) for c in candidates]
        self.last_seconds = time.perf_counter() - start
        return scores


class GenerativeVerifier:
    """Score = P(yes) from an LM asked whether a candidate solution is correct.

    The text read is `prefix.format(prompt=...) + suffix.format(candidate=...)`, ending where the
    model writes its yes/no token. The candidates' common token prefix is prefilled once and
    forked; each candidate prefills only the rest, all in one batch. P(yes) is normalised over
    {yes, no}.
    """

    generative = True  # costs model time: the profile's verifier cost applies

    def __init__(self, engine: Engine, prefix: str = "Problem: {prompt}\n",
                 suffix: str = "Solution: {candidate}\nCorrect:", yes: str = " yes", no: str = " no",
                 name: str = "verifier"):
        if "{candidate}" not in suffix:
            raise ConfigError(f"verifier suffix {suffix!r} must contain {{candidate}}")
        self.engine = engine
        self.prefix, self.suffix, self.name = prefix, suffix, name
        self.yes_id = self._single_token(yes)
        self.no_id = self._single_token(no)
        self.last_seconds = 0.0

    def _single_token(self, word: str) -> int:
        ids = self.engine.tokenizer.encode(word, add_special=False)
        if len(ids) != 1:
            raise ConfigError(f"verifier answer word {word!r} is {len(ids)} tokens for this tokenizer; "
                              "pass yes=/no= strings that are one token each")
        return ids[0]

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        start = time.perf_counter()
        scores: list[float] = []
        free = [s for s in range(self.engine.info.n_seq_max) if self.engine.n_tokens(s) == 0]
        if len(free) < 2:
            raise ConfigError("the verifier engine has no free sequence ids; load it with a larger n_seq_max")
        chunk = len(free) - 1
        for begin in range(0, len(candidates), chunk):
            scores += self._score_chunk(prompt, candidates[begin:begin + chunk], free)
        self.last_seconds = time.perf_counter() - start
        return scores

    def _score_chunk(self, prompt: str, candidates: Sequence[str], free: list[int]) -> list[float]:
        texts = [self.prefix.format(prompt=prompt) + self.suffix.format(candidate=c) for c in candidates]
        full = [self.engine.tokenizer.encode(t) for t in texts]
        # Encode whole texts, then share their longest common token prefix: encoding the parts
        # separately could split a token the verifier was trained to see whole (e.g. "?\n").
        shared = _common_prefix(full)
        root, seqs = free[0], free[1:len(candidates) + 1]
        self.engine.eval(root, full[0][:shared])
        try:
            for seq in seqs:
                self.engine.fork(root, seq)
            logits = self.engine.eval_batch({seq: ids[shared:] for seq, ids in zip(seqs, full)})
            return [self._p_yes(logits[seq][-1]) for seq in seqs]
        finally:
            for seq in (root, *seqs):
                self.engine.release(seq)

    def _p_yes(self, row: np.ndarray) -> float:
        pair = np.array([row[self.yes_id], row[self.no_id]], dtype=np.float64)
        pair = np.exp(pair - pair.max())
        return float(pair[0] / pair.sum())


class ProductVerifier:
    """Several verifiers at once: the score is the product of theirs, so a candidate must pass all
    (a step checker's pass and a generative verifier's P(yes): each catches what the other misses)."""

    def __init__(self, *parts, name: str = "all"):
        if not parts:
            raise ConfigError("ProductVerifier needs at least one verifier")
        self.parts, self.name = parts, name
        self.generative = any(getattr(p, "generative", True) for p in parts)
        self.last_seconds = 0.0

    def score(self, prompt: str, candidates: Sequence[str]) -> list[float]:
        start = time.perf_counter()
        scores = [1.0] * len(candidates)
        for part in self.parts:
            scores = [a * b for a, b in zip(scores, part.score(prompt, candidates))]
        self.last_seconds = time.perf_counter() - start
        return scores


def _common_prefix(sequences: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving every sequence at least one token of its own."""
    shortest = min(len(s) for s in sequences)
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    if n == 0:
        raise ConfigError("verifier texts are a single token; give the verifier a prefix such as 'Problem: {prompt}'")
    return n

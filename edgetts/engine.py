"""The one contract every runtime adapter implements, and the bookkeeping they share.

An engine holds up to `info.n_seq_max` sequences, each a KV cache that grows by `eval`.
Algorithms (sampling, N samples, speculative and early-exit decoding, verifiers) are written
once against this protocol in `edgetts/`, never inside an adapter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edgetts.errors import ConfigError, ContextOverflowError, SequenceError

if TYPE_CHECKING:
    import numpy as np

    from edgetts.tokenizer import Tokenizer
    from edgetts.types import EngineInfo


@runtime_checkable
class Engine(Protocol):
    info: EngineInfo
    tokenizer: Tokenizer

    def eval(self, seq: int, tokens: Sequence[int]) -> np.ndarray:
        """Append `tokens` to `seq`'s KV cache; return float32 logits, shape (len(tokens), n_vocab)."""

    def eval_batch(self, work: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """`eval` for many sequences in one forward pass."""

    def fork(self, src: int, dst: int) -> None:
        """`dst` starts as a copy of `src` (shared prefix computed once); an existing `dst` is replaced."""

    def truncate(self, seq: int, n: int) -> None:
        """Keep the first `n` positions of `seq` (speculative rollback)."""

    def release(self, seq: int) -> None:
        """Free `seq`'s cache; its id may be reused."""

    def n_tokens(self, seq: int) -> int:
        """Positions `seq` holds (0 for a free id)."""

    def close(self) -> None:
        """Free everything the engine holds."""


class BaseEngine:
    """Validation and length bookkeeping shared by adapters, so each adapter stays thin.

    Subclasses set `info` and `tokenizer` and implement `_eval_batch`, `_fork`, `_truncate`,
    `_release` (and optionally `_close`). Sequence ids, token ids and context length are checked
    here, once, before an adapter sees them.
    """

    info: EngineInfo
    tokenizer: Tokenizer

    def __init__(self) -> None:
        self._lengths: dict[int, int] = {}

    # public contract ---------------------------------------------------------------------
    def eval(self, seq: int, tokens: Sequence[int]) -> np.ndarray:
        return self.eval_batch({seq: tokens})[seq]

    def eval_batch(self, work: Mapping[int, Sequence[int]]) -> dict[int, np.ndarray]:
        if not work:
            return {}
        checked = {self._check_id(seq): self._check_tokens(seq, tokens) for seq, tokens in work.items()}
        out = self._eval_batch(checked)
        for seq, tokens in checked.items():
            self._lengths[seq] = self.n_tokens(seq) + len(tokens)
        return out

    def fork(self, src: int, dst: int) -> None:
        self._check_live(src)
        self._check_id(dst)
        if src == dst:
            raise SequenceError(f"cannot fork sequence {src} onto itself; pick another destination id")
        self.release(dst)
        self._fork(src, dst)
        self._lengths[dst] = self._lengths[src]

    def truncate(self, seq: int, n: int) -> None:
        length = self.n_tokens(seq)
        if not 0 <= n <= length:
            raise SequenceError(f"cannot truncate sequence {seq} to {n}: it holds {length} positions")
        if n < length:
            self._truncate(seq, n)
            self._lengths[seq] = n

    def release(self, seq: int) -> None:
        if seq in self._lengths:
            self._release(seq)
            del self._lengths[seq]

    def n_tokens(self, seq: int) -> int:
        return self._lengths.get(seq, 0)

    def sequences(self) -> list[int]:
        return sorted(self._lengths)

    def close(self) -> None:
        for seq in list(self._lengths):
            self.release(seq)
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # checks ------------------------------------------------------------------------------
    def _check_id(self, seq: int) -> int:
        if not isinstance(seq, int) or not 0 <= seq < self.info.n_seq_max:
            raise SequenceError(
                f"sequence id {seq!r} is out of range: this engine holds ids 0..{self.info.n_seq_max - 1} "
                "(raise n_seq_max when loading the model for more parallel sequences)"
            )
        return seq

    def _check_live(self, seq: int) -> None:
        if seq not in self._lengths:
            raise SequenceError(f"sequence {seq} holds nothing yet; eval tokens into it first")

    def _check_tokens(self, seq: int, tokens: Sequence[int]) -> list[int]:
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ConfigError(f"eval of sequence {seq} got no tokens; pass at least one token id")
        bad = [t for t in tokens if not 0 <= t < self.info.n_vocab]
        if bad:
            raise ConfigError(f"token ids {bad[:5]} are outside the vocabulary (0..{self.info.n_vocab - 1})")
        if self.n_tokens(seq) + len(tokens) > self.info.n_ctx:
            raise ContextOverflowError(
                f"sequence {seq} would hold {self.n_tokens(seq) + len(tokens)} positions, past the context "
                f"length {self.info.n_ctx}; shorten the prompt or max tokens, or load with a larger n_ctx"
            )
        return tokens

    # adapter hooks -----------------------------------------------------------------------
    def _eval_batch(self, work: dict[int, list[int]]) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def _fork(self, src: int, dst: int) -> None:
        raise NotImplementedError

    def _truncate(self, seq: int, n: int) -> None:
        raise NotImplementedError

    def _release(self, seq: int) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

"""Generation in layers, each adding one concern, all on the `Engine` contract.

- `generate_step` yields `(token, logprob)` forever from one sequence (speculative.py has the
  same shape with a drafter);
- `stream_generate` wraps either: prompt formatting (chat template), the context guard, EOS and
  stop strings, detokenization, and yields `GenerationResponse`s with running statistics;
- `generate` is the convenience call returning one `Response`;
- `sample_n` draws N samples from one prompt prefill, decoding them as one batch, optionally with
  step repair: a checker finds a wrong step in a partial sample, which is rewound to that step's
  start and drawn again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from edgetts.engine import Engine
from edgetts.errors import ConfigError, ContextOverflowError
from edgetts.sampling import Sampler, sample_seeds
from edgetts.tokenizer import Tokenizer
from edgetts.types import Completion, SamplingParams

Prompt = str | Sequence[int]
StepCheck = Callable[[str], "int | None"]  # partial text -> offset where its first wrong step starts, or None
# Rewinds per sample; then it goes on unrepaired (a model sure of a wrong step stays so). On 80 dev
# problems, 8 samples each: majority@4 77.5 % with 4, 80.0 % with 8, but 8 lengthens the slow tail
# that a budget must cover (decode steps +20 % with 4, +33 % with 8).
REPAIR_RETRIES = 4
DETOKENIZE_CONTEXT, DETOKENIZE_TAIL = 4, 16  # tokens of left context; tokens decoded before re-anchoring


@dataclass
class GenerationResponse:
    """One streamed step: the new text, the token behind it and the statistics so far."""

    text: str  # text added by this step (may be "" while a stop string or a UTF-8 character is pending)
    token: int | None
    logprob: float
    from_draft: bool
    prompt_tokens: int
    generation_tokens: int
    tokens_per_s: float  # generated tokens per second of decoding (prefill excluded)
    prefill_s: float
    finish_reason: str | None = None  # set on the last response: "stop" or "length"
    stats: dict = field(default_factory=dict)  # drafter statistics on the last response


@dataclass
class Response(Completion):
    """A finished generation: the Completion plus how it went."""

    prompt_tokens: int = 0
    tokens_per_s: float = 0.0
    prefill_s: float = 0.0
    stats: dict = field(default_factory=dict)


# --- prompt and context ------------------------------------------------------------------

def prompt_tokens(tokenizer: Tokenizer, prompt: Prompt, chat: bool = True) -> list[int]:
    """Token ids for `prompt`: a string goes through the model's chat template when it has one."""
    if not isinstance(prompt, str):
        return [int(t) for t in prompt]
    if not (chat and tokenizer.chat_template):
        return tokenizer.encode(prompt)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    ids = tokenizer.encode(text, add_special=False)
    # templates that do not write BOS themselves still need it when the model expects one
    if tokenizer.bos_id is not None and not text.startswith(tokenizer.bos_text) and tokenizer.encode("")[:1]:
        ids = [tokenizer.bos_id] + ids
    return ids


def room_for(engine: Engine, n_prompt: int, max_tokens: int) -> int:
    """Tokens that can be generated after an `n_prompt`-token prompt: max_tokens, capped by the context."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens!r} is invalid: must be >= 1")
    if n_prompt < 1:
        raise ConfigError("the prompt is empty; pass at least one token or character")
    room = engine.info.n_ctx - n_prompt
    if room < 1:
        raise ContextOverflowError(
            f"the prompt is {n_prompt} tokens but the model's context holds {engine.info.n_ctx}; "
            "shorten the prompt or load the model with a larger n_ctx"
        )
    return min(max_tokens, room)


# --- text and stop conditions ------------------------------------------------------------

class TextTracker:
    """Tokens -> text for one sequence: EOS, stop strings, and text safe to show so far."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        if any(not s for s in stop):
            raise ConfigError(f"stop strings must be non-empty; got {list(stop)!r}")
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""  # final text once finished
        self.shown = 0  # characters already handed out
        self.finish_reason: str | None = None
        self._anchor, self._anchor_text = 0, ""  # text of tokens[:anchor], decoded once
        self.rewound = 0  # tokens taken back by `rewind`

    def add(self, token: int, logprob: float) -> str:
        """Record one token; return the newly safe text. Sets finish_reason on EOS or a stop string."""
        if token in self.tokenizer.eos_ids:
            self.finish_reason = "stop"
            return self._flush(self.text)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        full = self._decoded()
        cut = self._stop_at(full)
        if cut is not None:
            self.finish_reason = "stop"
            self._drop_tokens_past(cut)
            return self._flush(full[:cut])
        self.text = full
        safe = len(full) - self._held_back(full)
        new, self.shown = full[self.shown:safe], max(self.shown, safe)
        return new

    def _decoded(self) -> str:
        """The text of every token so far, decoding only the tail: the whole list per token is quadratic.

        The tail is decoded with a few tokens of left context, because tokenizers (SentencePiece's
        leading space, split UTF-8 characters) do not decode token by token.
        """
        left = max(0, self._anchor - DETOKENIZE_CONTEXT)
        head = self.tokenizer.decode(self.tokens[left : self._anchor])
        tail = self.tokenizer.decode(self.tokens[left:])
        if not tail.startswith(head) or head.endswith("\ufffd"):
            full = self.tokenizer.decode(self.tokens)
        else:
            full = self._anchor_text + tail[len(head):]
        if len(self.tokens) - self._anchor >= DETOKENIZE_TAIL and not full.endswith("\ufffd"):
            self._anchor, self._anchor_text = len(self.tokens), full
        return full

    def _drop_tokens_past(self, cut: int) -> None:
        """Keep only the tokens the text before a stop string needs (plus one that straddles it)."""
        while self.tokens and len(self.tokenizer.decode(self.tokens[:-1])) >= cut:
            self.tokens.pop()
            self.logprobs.pop()

    def rewind(self, offset: int) -> int:
        """Take back the tokens from the one that writes character `offset` on; return how many went.

        Only for sequences that show no text yet (sample_n): nothing already handed out is unsaid.
        """
        keep = len(self.tokens)
        while keep and len(self.tokenizer.decode(self.tokens[:keep])) > offset:
            keep -= 1
        dropped = len(self.tokens) - keep
        self.rewound += dropped
        del self.tokens[keep:], self.logprobs[keep:]
        self.text = self.tokenizer.decode(self.tokens)
        self._anchor, self._anchor_text, self.shown = 0, "", 0
        return dropped

    def finish(self, reason: str) -> str:
        self.finish_reason = self.finish_reason or reason
        return self._flush(self.text)

    def _flush(self, text: str) -> str:
        self.text = text
        new, self.shown = text[self.shown:], len(text)
        return new

    def _stop_at(self, full: str) -> int | None:
        start = max(0, self.shown - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, full: str) -> int:
        """Characters at the end that may still become a stop string or a multi-byte character."""
        if full.endswith("\ufffd"):
            return 1
        return max((n for s in self.stop for n in range(1, len(s)) if full.endswith(s[:n])), default=0)

    def completion(self, seconds: float) -> Completion:
        return Completion(text=self.text, tokens=list(self.tokens), logprobs=list(self.logprobs),
                          finish_reason=self.finish_reason or "length", seconds=seconds, rewound=self.rewound)


# --- the layers --------------------------------------------------------------------------

def generate_step(engine: Engine, prompt: Sequence[int], sampler: Sampler, seq: int = 0
                  ) -> Iterator[tuple[int, float, bool]]:
    """Yield (token, logprob, from_draft=False) forever; the caller stops. Frees `seq` when closed."""
    history = list(prompt)
    engine.release(seq)
    try:
        logits = engine.eval(seq, history)[-1]
        while True:
            token, logprob = sampler(logits, history)
            yield token, logprob, False
            history.append(token)
            logits = engine.eval(seq, [token])[-1]
    finally:
        engine.release(seq)


def stream_generate(engine: Engine, prompt: Prompt, params: SamplingParams | None = None,
                    max_tokens: int = 256, stop: Sequence[str] = (), drafter=None, chat: bool = True,
                    seq: int = 0, **speculative_options) -> Iterator[GenerationResponse]:
    """Stream a generation as `GenerationResponse`s; with a `drafter`, decode speculatively."""
    run = _Run(engine, prompt, params, max_tokens, stop, drafter, chat, seq, speculative_options)
    yield from run.stream()


def generate(engine: Engine, prompt: Prompt, params: SamplingParams | None = None, max_tokens: int = 256,
             stop: Sequence[str] = (), drafter=None, chat: bool = True, seq: int = 0, **speculative_options
             ) -> Response:
    """Generate to the end and return one `Response` (text, tokens, logprobs, speed, finish reason)."""
    run = _Run(engine, prompt, params, max_tokens, stop, drafter, chat, seq, speculative_options)
    last = None
    for last in run.stream():
        pass
    done = run.tracker.completion(time.perf_counter() - run.start)
    return Response(**vars(done), prompt_tokens=last.prompt_tokens, tokens_per_s=last.tokens_per_s,
                    prefill_s=last.prefill_s, stats=last.stats)


class _Run:
    """One generation's parts: prompt ids, token steps (plain or speculative), text tracker."""

    def __init__(self, engine, prompt, params, max_tokens, stop, drafter, chat, seq, speculative_options):
        self.ids = prompt_tokens(engine.tokenizer, prompt, chat)
        self.limit = room_for(engine, len(self.ids), max_tokens)
        self.drafter, self.policy = drafter, None
        self.tracker = TextTracker(engine.tokenizer, stop)
        sampler = Sampler(params or SamplingParams())
        if drafter is None:
            self.steps = generate_step(engine, self.ids, sampler, seq)
        else:
            from edgetts.speculative import policy_for, speculative_generate_step

            self.policy = speculative_options.pop("policy", None) or policy_for(drafter, **speculative_options)
            self.steps = speculative_generate_step(engine, drafter, self.ids, sampler, seq, limit=self.limit,
                                                   policy=self.policy)
        self.start = time.perf_counter()

    def stream(self) -> Iterator[GenerationResponse]:
        tracker, prefill_s = self.tracker, None
        self.start = time.perf_counter()
        try:
            for token, logprob, from_draft in self.steps:
                now = time.perf_counter()
                prefill_s = now - self.start if prefill_s is None else prefill_s
                text = tracker.add(token, logprob)
                if tracker.finish_reason is None and len(tracker.tokens) >= self.limit:
                    text += tracker.finish("length")
                done = tracker.finish_reason is not None
                yield GenerationResponse(text, token, logprob, from_draft, len(self.ids), len(tracker.tokens),
                                         self._rate(now, prefill_s), prefill_s, tracker.finish_reason,
                                         self._stats() if done else {})
                if done:
                    return
        finally:
            self.steps.close()

    def _rate(self, now: float, prefill_s: float) -> float:
        """Decode speed: tokens after the first (which prefill produced) per second after prefill."""
        decode_s = now - self.start - prefill_s
        n = len(self.tracker.tokens)
        return (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0

    def _stats(self) -> dict:
        return {"drafter": self.drafter.name, **self.policy.stats()} if self.drafter is not None else {}


# --- N samples, one prefill --------------------------------------------------------------

def sample_n(engine: Engine, prompt_tokens: Sequence[int], n: int, params: SamplingParams, max_tokens: int,
             stop: Sequence[str] = (), deadline: float | None = None, repair: StepCheck | None = None,
             retries: int = REPAIR_RETRIES) -> list[Completion]:
    """N samples of one prompt: prefill once, fork into N sequences, decode them as one batch.

    Sample i uses seed `params.seed + i` (see `sample_seeds`), so it equals a single generation
    with that seed. `deadline` is an absolute `time.monotonic()`; samples unfinished by then end
    with finish_reason "deadline". Sequence ids 0..n-1 are used and released.

    `repair(text)`: a step checker run on each partial sample; where it reports a wrong step, the
    sample is rewound to that step's start (its KV cache truncated) and goes on sampling from
    there, at most `retries` times (RESEARCH.md §1.6 scores prefixes to drop them; this keeps the
    sample and redraws only its wrong step, which a programmatic step checker can point to).
    """
    if not 1 <= n <= engine.info.n_seq_max:
        raise ConfigError(f"n={n!r} is invalid: this engine holds 1..{engine.info.n_seq_max} sequences "
                          "(load the model with a larger n_seq_max for more samples)")
    ids = [int(t) for t in prompt_tokens]
    limit = room_for(engine, len(ids), max_tokens)
    start = time.perf_counter()
    batch = _Batch(engine, ids, params, n, stop, limit, repair, retries)
    try:
        batch.run(deadline)
    finally:
        for seq in range(n):
            engine.release(seq)
    seconds = time.perf_counter() - start
    return [t.completion(seconds) for t in batch.trackers]


class _Batch:
    """The sequences of one `sample_n` call. Invariant: sequence s's KV cache holds the prompt and
    every token of sample s but the last, which is the next one to evaluate."""

    def __init__(self, engine, ids, params, n, stop, limit, repair, retries):
        self.engine, self.ids, self.limit, self.repair = engine, ids, limit, repair
        self.samplers = [Sampler(params, seed=s) for s in sample_seeds(params, n)]
        self.trackers = [TextTracker(engine.tokenizer, stop) for _ in range(n)]
        self.retries = [retries] * n

    def run(self, deadline: float | None) -> None:
        """Prefill the prompt once in sequence 0, fork it, then step every live sequence together."""
        engine, n = self.engine, len(self.trackers)
        for seq in range(n):
            engine.release(seq)
        last = engine.eval(0, self.ids)[-1]
        for seq in range(1, n):
            engine.fork(0, seq)
        pending = self._advance({seq: last for seq in range(n)})
        while pending:
            if deadline is not None and time.monotonic() >= deadline:
                for seq in pending:
                    self.trackers[seq].finish("deadline")
                return
            pending = self._advance({seq: logits[-1] for seq, logits in engine.eval_batch(pending).items()})

    def _advance(self, rows: dict) -> dict[int, list[int]]:
        """Sample one token for each sequence in `rows`; return what each live one evaluates next."""
        going = {}
        for seq, logits in rows.items():
            tracker = self.trackers[seq]
            token, logprob = self.samplers[seq](logits, self.ids + tracker.tokens)
            tracker.add(token, logprob)
            if tracker.finish_reason is None and len(tracker.tokens) >= self.limit:
                tracker.finish("length")
            if tracker.finish_reason is None:
                going[seq] = self._repaired(seq) or [token]
        return going

    def _repaired(self, seq: int) -> list[int] | None:
        """If the checker finds a wrong step, rewind to its start; return the token to evaluate next."""
        tracker = self.trackers[seq]
        if self.repair is None or not self.retries[seq]:
            return None
        offset = self.repair(tracker.text)
        if offset is None:
            return None
        self.retries[seq] -= 1
        tracker.rewind(offset)
        history = self.ids + tracker.tokens
        self.engine.truncate(seq, len(history) - 1)  # re-evaluate the last kept token: its logits are gone
        return history[-1:]

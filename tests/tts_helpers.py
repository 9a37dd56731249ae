"""Doubles for the test-time-scaling tests: scripted answering models and a slowed engine."""

from __future__ import annotations

import time

import numpy as np

from edgetts.testing import FakeEngine

QUESTION_END = ord("?")
EOS = 257


def answering_script(answers=(("4", 2.0), ("5", 1.2), ("7", 0.3)), length: int = 12, n_vocab: int = 258):
    """A 'model' that, after the prompt's '?', writes one digit (logits `answers`), `length` spaces, EOS.

    `answers` may be a callable prefix -> answers, so the answer distribution can depend on the prompt.
    """
    def script(prefix):
        out = np.full(n_vocab, -30.0, dtype=np.float32)
        ends = [i for i, t in enumerate(prefix) if t == QUESTION_END]
        generated = len(prefix) - 1 - ends[-1] if ends else 0
        if generated == 0:
            for text, logit in (answers(prefix) if callable(answers) else answers):
                out[ord(text)] = logit
        elif generated <= length:
            out[ord(" ")] = 5.0
        else:
            out[EOS] = 5.0
        return out
    return script


def one_step_script(prompt_len: int):
    """After the prompt the model writes `1+1=`, then `2` or `3` (even odds), then `,` and stops."""
    text = b"1+1="

    def script(prefix):
        logits = np.full(258, -30.0, dtype=np.float32)
        made = prefix[prompt_len:]
        if len(made) < len(text):
            logits[text[len(made)]] = 30.0
        elif len(made) == len(text):
            logits[[ord("2"), ord("3")]] = 0.0
        else:
            logits[ord(",") if len(made) == len(text) + 1 else EOS] = 30.0
        return logits
    return script


class SlowEngine(FakeEngine):
    """A FakeEngine whose forward pass sleeps `delay * (1 + 0.25 * (rows - 1))` seconds: a device
    whose batched step grows with the batch, like a compute-bound CPU. Set `delay` to slow it down."""

    def __init__(self, delay: float = 0.002, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def _eval_batch(self, work):
        time.sleep(self.delay * (1 + 0.25 * (len(work) - 1)) + 1e-5 * sum(len(t) for t in work.values()))
        return super()._eval_batch(work)

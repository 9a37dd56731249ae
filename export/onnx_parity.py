"""Parity of an exported ONNX folder against the torch reference: the figures the manifest records.

- greedy: how many of `steps` greedy tokens our ONNX engine produces identically to torch;
- top1_agreement: teacher-forced on torch's greedy continuation, the fraction of positions where
  both pick the same next token (what int8/int4 quality is judged by);
- max_abs_logit_diff: the largest logit difference over those positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROMPT = "What is 37*48+15? Answer:"


def greedy(engine, prompt: list[int], steps: int, seq: int = 0) -> list[int]:
    """`steps` argmax tokens after `prompt`, one eval per token."""
    engine.release(seq)
    logits = engine.eval(seq, prompt)[-1]
    out = []
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        logits = engine.eval(seq, [out[-1]])[-1]
    engine.release(seq)
    return out


def compare(reference, candidate, prompt: list[int], steps: int) -> dict:
    """Parity figures of `candidate` against `reference` (both Engines over the same tokenizer)."""
    ref_tokens = greedy(reference, prompt, steps)
    got_tokens = greedy(candidate, prompt, steps)
    identical = next((i for i, (a, b) in enumerate(zip(ref_tokens, got_tokens)) if a != b), steps)
    sequence = prompt + ref_tokens
    ref = _scored(reference, sequence)[len(prompt) - 1:]
    got = _scored(candidate, sequence)[len(prompt) - 1:]
    return {
        "steps": steps,
        "prompt_tokens": len(prompt),
        "greedy_identical_steps": identical,
        "top1_agreement": float(np.mean(ref.argmax(-1) == got.argmax(-1))),
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
    }


def _scored(engine, tokens: list[int]) -> np.ndarray:
    engine.release(0)
    logits = engine.eval(0, tokens)
    engine.release(0)
    return logits


def measure_parity(source: str | Path, folder: Path, steps: int) -> dict:
    """Compare the export in `folder` with the torch model it came from."""
    from edgetts.runtimes.onnxruntime import OnnxEngine
    from edgetts.runtimes.torch import TorchEngine

    with TorchEngine(Path(source), n_seq_max=1) as reference, OnnxEngine(folder, device="cpu", n_seq_max=1) as candidate:
        prompt = reference.tokenizer.encode(PROMPT)
        return compare(reference, candidate, prompt, steps)

"""`edgetts run` as one library call: open the model (and drafter), generate, report.

`run()` returns a plain dict (text, tokens, latency_s, stats, and samples when n > 1) so the CLI,
`--json` and callers such as the budget controller share one code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from edgetts.errors import ConfigError, ModelNotFoundError
from edgetts.types import SamplingParams


def default_model() -> Path:
    """The embedded generator as an artifact (exported on first use into the cache)."""
    try:
        from edgetts import embedded

        return embedded.artifact("generator")
    except (ImportError, ModelNotFoundError) as exc:
        raise ModelNotFoundError(
            f"no built-in model is available in this installation ({exc}); pass --model PATH "
            "(a .gguf file, an ONNX folder or a Hugging Face folder)"
        ) from exc


# A drafter's steps are small: on one thread it runs nearly as fast, and its thread pool does not
# fight the target's for the cores (on 2 cores, a 2-thread drafter cost the ONNX target 1.52x -> 1.09x).
DRAFT_THREADS = 1


def open_drafter(spec: str | None, model: Path, runtime: str | None = None, **engine_options):
    """The drafter for `--draft`: "ngram", "early-exit:K", a draft model path or a built-in name,
    on `runtime` (default: the target's for early-exit:K, the artifact's own for a path)."""
    from edgetts.drafters import make_drafter

    if spec and not Path(spec).exists() and not spec.startswith("early-exit:") and spec != "ngram":
        spec = str(_builtin(spec, runtime))
    return make_drafter(spec, model, runtime, **engine_options)


def _builtin(name: str, runtime: str | None) -> Path:
    try:
        from edgetts import embedded
    except ImportError as exc:
        raise ModelNotFoundError(f"--draft {name!r}: no such file or folder") from exc
    if name not in embedded.NAMES:
        raise ModelNotFoundError(f"--draft {name!r}: no such file or folder; pass a draft model path, "
                                 f"ngram, early-exit:K or a built-in ({', '.join(embedded.NAMES)})")
    from edgetts.drafters import RUNTIME_ARTIFACTS
    from edgetts.runtimes import resolve

    runtime = resolve(runtime).name if runtime else "llama.cpp"
    return embedded.artifact(name, RUNTIME_ARTIFACTS[runtime][0]) if runtime in RUNTIME_ARTIFACTS else embedded.path(name)


def run(prompt: str, model: str | Path | None = None, draft: str | None = None,
        params: SamplingParams | None = None, max_tokens: int = 256, n: int = 1, stop: Sequence[str] = (),
        chat: bool = True, runtime: str | None = None, device: str | None = None, threads: int | None = None,
        on_text: Callable[[str], None] | None = None, draft_runtime: str | None = None,
        draft_threads: int = DRAFT_THREADS) -> dict:
    """Generate for `prompt` and return {text, tokens, latency_s, stats[, samples]}.

    `on_text` receives text as it is generated (n = 1 only). With no `model`, the embedded generator.
    The drafter runs on `draft_runtime` (see `open_drafter`) with `draft_threads` threads.
    """
    from edgetts.runtimes import load

    if draft and n > 1:
        raise ConfigError("--draft speeds up one sample at a time; drop --draft or use --n 1 "
                          "(N samples already share each decode step)")
    start = time.perf_counter()
    model = Path(model) if model else default_model()
    threading = {"n_threads": threads} if threads else {}
    drafter = open_drafter(draft, model, draft_runtime, n_threads=draft_threads)
    engine = None
    try:
        engine = load(model, runtime=runtime, device=device, **threading, **({"n_seq_max": n} if n > 1 else {}))
        load_s = time.perf_counter() - start
        if n == 1:
            with _remembered(drafter, model, engine, threads):
                result = _one(engine, prompt, params, max_tokens, stop, chat, drafter, on_text)
        else:
            result = _many(engine, prompt, params, max_tokens, stop, chat, n)
    finally:
        for part in (engine, drafter):
            if part is not None:
                part.close()
    result["latency_s"] = round(time.perf_counter() - start, 4)  # wall time of the request, loading included
    result["stats"].update(model=str(model), runtime=engine.info.runtime, device=engine.info.device,
                           load_s=round(load_s, 4))
    return result


@contextmanager
def _remembered(drafter, model: Path, engine, threads: int | None):
    """Give the drafter what earlier requests learned on this device (costs, acceptance, whether it
    is switched off) and save what this one adds, so each process does not pay to re-probe."""
    if drafter is None:
        yield
        return
    from edgetts.speculative import policy_file, remember_policy, remembered_policy

    drafter_engine = getattr(drafter, "engine", None)  # a model drafter's costs depend on where it runs
    where = f"{drafter_engine.info.runtime}/{drafter_engine.info.device}" if drafter_engine else ""
    path = policy_file(str(model.resolve()), drafter.name, where, engine.info.runtime, engine.info.device, str(threads))
    drafter.policy = remembered_policy(path)
    yield
    remember_policy(drafter.policy, path)


def _one(engine, prompt, params, max_tokens, stop, chat, drafter, on_text) -> dict:
    from edgetts.generate import stream_generate

    text, tokens, last = "", [], None
    for last in stream_generate(engine, prompt, params, max_tokens, stop, drafter, chat):
        text += last.text
        if on_text and last.text:
            on_text(last.text)
        tokens.append(last.token)
    if last.finish_reason == "stop" and tokens and tokens[-1] in engine.tokenizer.eos_ids:
        tokens.pop()
    stats = dict(prompt_tokens=last.prompt_tokens, generated_tokens=last.generation_tokens,
                 tokens_per_s=round(last.tokens_per_s, 2), prefill_s=round(last.prefill_s, 4),
                 finish_reason=last.finish_reason, **last.stats)
    return dict(text=text, tokens=tokens[: last.generation_tokens], stats=stats)


def _many(engine, prompt, params, max_tokens, stop, chat, n) -> dict:
    from edgetts.generate import prompt_tokens, sample_n

    ids = prompt_tokens(engine.tokenizer, prompt, chat)
    samples = sample_n(engine, ids, n, params or SamplingParams(), max_tokens, stop)
    generated = sum(len(s.tokens) for s in samples)
    seconds = samples[0].seconds
    stats = dict(prompt_tokens=len(ids), generated_tokens=generated, n=n,
                 tokens_per_s=round(generated / seconds, 2) if seconds else 0.0)
    return dict(text=samples[0].text, tokens=samples[0].tokens, stats=stats,
                samples=[dict(text=s.text, tokens=s.tokens, finish_reason=s.finish_reason,
                              mean_logprob=round(s.mean_logprob, 4)) for s in samples])


def print_result(result: dict, as_json: bool = False, streamed: bool = False, stats: bool = False) -> None:
    """The terminal side of `edgetts run`: JSON, or text (unless streamed) and a stats line on stderr."""
    import json
    import sys

    if as_json:
        print(json.dumps(result, indent=2))
        return
    if streamed:
        print()
    elif "samples" in result:
        for i, sample in enumerate(result["samples"]):
            print(f"--- sample {i} ({sample['finish_reason']}, mean logprob {sample['mean_logprob']:.3f})\n{sample['text']}")
    else:
        print(result["text"])
    if stats:
        print(stats_line(result), file=sys.stderr)


def stats_line(result: dict) -> str:
    s = result["stats"]
    line = (f"{s['generated_tokens']} tokens in {result['latency_s']:.2f}s, {s['tokens_per_s']:.1f} tok/s "
            f"decode, prompt {s['prompt_tokens']} tokens ({s.get('runtime')})")
    if s.get("drafter"):
        acceptance = s["acceptance_rate"]
        line += (f"; {s['drafter']}: acceptance {acceptance if acceptance is None else f'{acceptance:.0%}'}, "
                 f"{s['mean_accepted'] or 0:.2f} drafts kept per pass, {s['plain_tokens']} plain tokens, "
                 f"switched off {s['switched_off']}x")
    return line

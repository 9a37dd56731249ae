"""Decode speed of edgetts' ONNX Runtime engine against onnxruntime-genai and optimum, same weights, same run.

    python benchmarks/bench_onnxruntime.py --root /tmp/edgetts-bench --quants int4 fp32

For each quantization: the shape-faithful checkpoint (random weights, real shape) is exported once
with `edgetts export --format onnx` into --root; then, one engine loaded at a time,
- ours:     OnnxEngine, 32-token prompt, 128 greedy steps (one eval per token); idle threads sleep;
- ours_spinning: the same with idle threads spinning, as onnxruntime-genai's do by default;
- genai:    onnxruntime-genai running the same folder (its genai_config.json), same prompt and length;
- optimum:  ORTModelForCausalLM.generate on the same folder;
- N = 8:    one 64-token prompt, 64 tokens per sample: batched (prefill once, fork, 8 rows per step)
            vs 8 sequential generations (prompt KV reused by fork) and 8 independent ones (prompt re-read).
Engines are timed in interleaved rounds after a warm-up (medians of --repeats), with the same
intra-op thread count (--threads). Writes benchmarks/results/onnxruntime_<model>.json and a .png.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
GOALS = {"vs_genai": 0.9, "vs_optimum": 2.0, "batched_vs_sequential": 0.5}


def stats(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def interleaved(runners: dict, repeats: int) -> dict:
    """Warm each engine up, then time them in rounds (ours, genai, optimum, ours, ...), so a change
    in the machine's load during the run hits every engine alike."""
    for run in runners.values():
        run()
    runs: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            runs[name].append(run())
    return {name: stats(r) for name, r in runs.items()}


def prompt_ids(n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(0).integers(10, 300, n)]


# --- engines: each returns a run() -> decode tokens/s -------------------------------------------

def ours_decode(folder: Path, prompt: list[int], steps: int, threads: int, spinning: bool = False):
    from edgetts.runtimes.onnxruntime import OnnxEngine

    engine = OnnxEngine(folder, device="cpu", n_seq_max=16, n_threads=threads, spinning=spinning)

    def run() -> float:
        engine.release(0)
        token = int(np.argmax(engine.eval(0, prompt)[-1]))
        start = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(engine.eval(0, [token])[-1]))
        return steps / (time.perf_counter() - start)

    return run


def genai_decode(folder: Path, prompt: list[int], steps: int, threads: int):
    import onnxruntime  # noqa: F401  onnxruntime-genai loads the library this import provides
    import onnxruntime_genai as og

    config = og.Config(str(folder))  # its own default here was 1 intra-op thread: set it like the others
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)

    def run() -> float:
        params = og.GeneratorParams(model)
        length = len(prompt) + steps + 1
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)  # prefill
        start = time.perf_counter()
        for _ in range(steps):
            generator.generate_next_token()
        return steps / (time.perf_counter() - start)

    return run


def optimum_decode(folder: Path, prompt: list[int], steps: int, threads: int):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    from edgetts.runtimes.onnxruntime import default_session_options

    # The same session options as our engine (threads sleep between ops), so the ratio measures the
    # engines, not ONNX Runtime's spin policy.
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=default_session_options(threads))
    ids = torch.tensor([prompt])

    def generate(n: int) -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - start

    def run() -> float:  # generate() has no step hook: decode time = time(1 + steps tokens) - time(1 token)
        return steps / (generate(steps + 1) - generate(1))

    return run


def batch_vs_sequential(folder: Path, n: int, prompt_len: int, steps: int, repeats: int, threads: int) -> dict:
    from edgetts.runtimes.onnxruntime import OnnxEngine

    prompt = prompt_ids(prompt_len)
    rng = np.random.default_rng(1)

    def pick(logits: np.ndarray) -> int:  # sampled rows differ, as N samples do (cost does not depend on it)
        top = np.argpartition(logits, -8)[-8:]
        return int(rng.choice(top))

    with OnnxEngine(folder, device="cpu", n_seq_max=n + 1, n_threads=threads) as engine:
        def batched() -> float:
            start = time.perf_counter()
            _reset(engine, n + 1)
            first = engine.eval(n, prompt)[-1]
            for s in range(n):
                engine.fork(n, s)
            last = {s: pick(first) for s in range(n)}
            for _ in range(steps - 1):
                out = engine.eval_batch({s: [t] for s, t in last.items()})
                last = {s: pick(out[s][-1]) for s in range(n)}
            return time.perf_counter() - start

        def sequential(reuse_prompt: bool) -> float:
            start = time.perf_counter()
            _reset(engine, n + 1)
            first = engine.eval(n, prompt)[-1]
            for s in range(n):
                if reuse_prompt:
                    engine.fork(n, s)
                else:
                    first = engine.eval(s, prompt)[-1]
                token = pick(first)
                for _ in range(steps - 1):
                    token = pick(engine.eval(s, [token])[-1])
                engine.release(s)
            return time.perf_counter() - start

        engine.eval_batch({s: prompt[:8] for s in range(n)})  # warm-up: kernels for 8-row and 1-row shapes
        engine.eval(n, prompt[:8])
        out = {"n": n, "prompt_tokens": prompt_len, "tokens_per_sample": steps,
               "batched_s": stats([batched() for _ in range(repeats)]),
               "sequential_prompt_reused_s": stats([sequential(True) for _ in range(repeats)]),
               "sequential_prompt_reread_s": stats([sequential(False) for _ in range(repeats)])}
    b = out["batched_s"]["median"]
    out["ratio_vs_sequential_prompt_reused"] = b / out["sequential_prompt_reused_s"]["median"]
    out["ratio_vs_sequential_prompt_reread"] = b / out["sequential_prompt_reread_s"]["median"]
    return out


def _reset(engine, n: int) -> None:
    for s in range(n):
        engine.release(s)


# --- driver ---------------------------------------------------------------------------------

def export(root: Path, model: str, quant: str) -> Path:
    from edgetts.export.onnx import export_onnx
    from edgetts.testing import shape_faithful_checkpoint

    checkpoint = shape_faithful_checkpoint(model, root)
    out = root / f"{model}.{quant}.onnx"
    if not (out / "manifest.json").exists():
        export_onnx(checkpoint, out, quant=quant, progress=True)
    return out


def bench_quant(root: Path, model: str, quant: str, args) -> dict:
    folder = export(root, model, quant)
    manifest = json.loads((folder / "manifest.json").read_text())
    prompt = prompt_ids(args.prompt)
    row = {"quant": manifest["quant"], "size_mb": round(manifest["size_bytes"] / 1e6, 1),
           "bits_per_weight": manifest["bits_per_weight"], "parity": manifest["parity"], "threads": {}}
    for threads in args.threads:
        print(f"[{quant}, {threads} threads] decode: ours, genai, optimum interleaved ...", file=sys.stderr, flush=True)
        engines = (("ours", ours_decode), ("ours_spinning", partial(ours_decode, spinning=True)),
                   ("genai", genai_decode), ("optimum", optimum_decode))
        runners = {name: fn(folder, prompt, args.decode, threads) for name, fn in engines}
        figures = {f"{name}_tok_s": f for name, f in interleaved(runners, args.repeats).items()}
        del runners
        gc.collect()  # free the three sessions before the next ones load
        ours = figures["ours_tok_s"]["median"]
        figures["ratio_vs_genai"] = ours / figures["genai_tok_s"]["median"]
        # like for like: onnxruntime-genai's threads spin between ops by default, ours sleep by default
        figures["ratio_vs_genai_both_spinning"] = figures["ours_spinning_tok_s"]["median"] / figures["genai_tok_s"]["median"]
        figures["ratio_vs_optimum"] = ours / figures["optimum_tok_s"]["median"]
        row["threads"][threads] = figures
    if args.no_batch:
        return row
    threads = args.threads[0]
    print(f"[{quant}, {threads} threads] N={args.n} batched vs sequential ...", file=sys.stderr, flush=True)
    row["batch"] = batch_vs_sequential(folder, args.n, args.batch_prompt, args.batch_tokens, args.batch_repeats, threads)
    row["batch"]["threads"] = threads
    row["goals_met"] = {
        "vs_genai": all(f["ratio_vs_genai"] >= GOALS["vs_genai"] for f in row["threads"].values()),
        "vs_optimum": all(f["ratio_vs_optimum"] >= GOALS["vs_optimum"] for f in row["threads"].values()),
        "batched_vs_sequential": row["batch"]["ratio_vs_sequential_prompt_reused"] <= GOALS["batched_vs_sequential"],
    }
    return row


def machine() -> dict:
    import onnxruntime

    from edgetts.doctor import cpu_info

    return {"cpu": cpu_info(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "onnxruntime_genai": _version("onnxruntime-genai"), "optimum_onnx": _version("optimum-onnx"),
            "load_average_at_start": os.getloadavg(),
            "threads": "--threads intra-op threads for all; ours and optimum with spinning off (our default), "
                       "ours_spinning and onnxruntime-genai with spinning on (genai's default)"}


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/edgetts-bench"), help="checkpoints and exports (~5 GB)")
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--quants", nargs="+", default=["int4", "fp32"])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--batch-prompt", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="intra-op threads, same for all engines")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per decode figure (after a warm-up)")
    parser.add_argument("--batch-repeats", type=int, default=2, help="timed runs per N-sample figure")
    parser.add_argument("--no-batch", action="store_true", help="decode figures only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = {"benchmark": "onnxruntime decode", "model": f"{args.model} (shape-faithful, random weights)",
              "started": started, "machine": machine(), "settings": vars(args) | {"root": str(args.root)},
              "goals": GOALS, "quants": {}}
    for quant in args.quants:
        result["quants"][quant] = bench_quant(args.root, args.model, quant, args)
    out = args.out or RESULTS / f"onnxruntime_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    plot(result, out.with_suffix(".png"))
    print(summary(result))
    return result


def plot(result: dict, path: Path) -> None:
    """Decode tok/s per engine and quant (median, min-max whiskers), plus the N=8 wall times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quants = list(result["quants"])
    fig, (speed, batch) = plt.subplots(1, 2, figsize=(10, 4))
    threads = result["settings"]["threads"][0]
    for i, engine in enumerate(("ours", "genai", "optimum")):
        rows = [result["quants"][q]["threads"][threads][f"{engine}_tok_s"] for q in quants]
        med = [r["median"] for r in rows]
        err = [[m - r["min"] for m, r in zip(med, rows)], [r["max"] - m for m, r in zip(med, rows)]]
        speed.bar(np.arange(len(quants)) + (i - 1) * 0.27, med, 0.27, yerr=err, label=engine)
    speed.set_xticks(range(len(quants)), quants)
    speed.set_ylabel("decode tokens/s")
    speed.set_title(result["model"].split(" (")[0] + f": decode, {threads} threads")
    speed.legend()
    for i, key in enumerate(("batched_s", "sequential_prompt_reused_s", "sequential_prompt_reread_s")):
        med = [result["quants"][q].get("batch", {}).get(key, {}).get("median", 0) for q in quants]
        batch.bar(np.arange(len(quants)) + (i - 1) * 0.27, med, 0.27, label=key.removesuffix("_s").replace("_", " "))
    batch.set_xticks(range(len(quants)), quants)
    batch.set_ylabel("seconds for N samples")
    batch.set_title(f"N = {result['settings']['n']} samples")
    batch.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary(result: dict) -> str:
    lines = ["quant | threads | ours tok/s | genai tok/s | ours/genai | ours spinning/genai | optimum tok/s | ours/optimum"]
    for quant, row in result["quants"].items():
        for threads, f in row["threads"].items():
            lines.append(f"{quant} | {threads} | {f['ours_tok_s']['median']:.1f} | {f['genai_tok_s']['median']:.1f} | "
                         f"{f['ratio_vs_genai']:.2f} | {f['ratio_vs_genai_both_spinning']:.2f} | "
                         f"{f['optimum_tok_s']['median']:.1f} | {f['ratio_vs_optimum']:.2f}")
    for quant, row in result["quants"].items():
        if "batch" not in row:
            continue
        b = row["batch"]
        lines.append(f"{quant}: N={b['n']} batched {b['batched_s']['median']:.2f}s vs sequential "
                     f"{b['sequential_prompt_reused_s']['median']:.2f}s (prompt reused) = {b['ratio_vs_sequential_prompt_reused']:.2f}, "
                     f"{b['sequential_prompt_reread_s']['median']:.2f}s (re-read) = {b['ratio_vs_sequential_prompt_reread']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

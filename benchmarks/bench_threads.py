"""Decode-step latency of the llama.cpp engine by thread setting, on a quiet machine and with one
core taken by another process: why the engine follows the free cores (README, "Threads").

    python benchmarks/bench_threads.py            # embedded generator (built on demand), batch 1/8/16
    python benchmarks/bench_threads.py --steps 400 --out benchmarks/results/threads.json

Each setting steps the given number of times at each batch size (sequences forked from one prompt,
reset every 200 positions); "busy" runs a pure-Python loop in another process meanwhile.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from pathlib import Path

import numpy as np

SETTINGS = {"1 thread": 1, "2 threads": 2, "auto": None}
BATCHES = (1, 8, 16)


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def step_times(engine, prompt: list[int], n: int, steps: int) -> np.ndarray:
    seqs = list(range(1, n + 1))

    def fork():
        engine.eval(0, prompt)
        for seq in seqs:
            engine.fork(0, seq)

    fork()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.eval_batch({seq: [prompt[-1]] for seq in seqs})
        times.append(time.perf_counter() - start)
        if engine.n_tokens(seqs[0]) > 200:
            for seq in [0, *seqs]:
                engine.release(seq)
            fork()
    for seq in [0, *seqs]:
        engine.release(seq)
    return np.array(times) * 1e3


def measure(path: Path, steps: int) -> list[dict]:
    from edgetts.runtimes.llamacpp import LlamaCppEngine

    rows = []
    for label, threads in SETTINGS.items():
        engine = LlamaCppEngine(path, n_ctx=256, n_seq_max=max(BATCHES) + 1, n_threads=threads)
        prompt = engine.tokenizer.encode("What is 37*48+15?\n", add_special=False)
        for n in BATCHES:
            t = step_times(engine, prompt, n, steps)
            rows.append({"setting": label, "batch": n, "threads_used": list(engine.threads),
                         "p50_ms": round(float(np.median(t)), 3), "p99_ms": round(float(np.percentile(t, 99)), 3),
                         "max_ms": round(float(t.max()), 2)})
        engine.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default="benchmarks/results/threads.json")
    args = parser.parse_args()
    from edgetts import embedded

    path = embedded.artifact("generator", "gguf")
    result = {"machine": {"cpus": multiprocessing.cpu_count(), "platform": platform.platform()}, "steps": args.steps}
    result["quiet"] = measure(path, args.steps)
    burner = multiprocessing.Process(target=_burn, args=(3600,), daemon=True)
    burner.start()
    try:
        time.sleep(0.5)  # let the watch see the other process before the first setting starts
        result["one_core_busy"] = measure(path, args.steps)
    finally:
        burner.terminate()
    for case in ("quiet", "one_core_busy"):
        for row in result[case]:
            print(f"{case:14s} {row['setting']:9s} batch {row['batch']:2d} threads {row['threads_used']}: "
                  f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  max {row['max_ms']:.1f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

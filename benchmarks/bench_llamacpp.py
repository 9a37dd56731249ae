"""Our llama.cpp engine against llama-cpp-python's own `Llama` loop, same GGUF, same threads, same run.

    python benchmarks/bench_llamacpp.py --threads 2            # shape-faithful Qwen2.5-0.5B, q4_k_m + q8_0

Per quantization: single-sequence greedy decode tokens/s (ours vs `Llama.generate`), prefill
tokens/s, the fraction of the copy bandwidth measured in this run that decode reaches, and
N = 8 samples of 64 tokens from one prompt: batched fork + eval_batch vs 8 sequential
generations. Writes benchmarks/results/llamacpp.json. Checkpoints live in /tmp/edgetts-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "llamacpp.json"


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """numpy copy, one thread, read + write counted (how ANCHORS.md measures it)."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _llama(path: Path, threads: int, n_ctx: int):
    """The high-level Llama, with extra buffer types off as in our engine (AMX segfault, see runtimes/llamacpp.py)."""
    import llama_cpp
    from llama_cpp import llama_cpp as low

    from edgetts.runtimes.llamacpp_lib import llama_cpp as silenced

    silenced()
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               n_batch=512, verbose=False)
    finally:
        low.llama_model_default_params = default


def ours_decode(engine, prompt: list[int], steps: int) -> float:
    engine.release(0)
    token = int(np.argmax(engine.prefill(0, prompt)[-1]))
    start = time.perf_counter()
    for _ in range(steps):
        token = int(np.argmax(engine.eval(0, [token])[-1]))
    return steps / (time.perf_counter() - start)


def llama_decode(llm, prompt: list[int], steps: int) -> float:
    llm.reset()
    stream = llm.generate(prompt, top_k=1, temp=0.0, reset=True)
    next(stream)  # the prompt is evaluated before the first token is yielded
    start = time.perf_counter()
    for _ in range(steps):
        next(stream)
    return steps / (time.perf_counter() - start)


def prefill_rates(engine, llm, prompt: list[int]) -> dict:
    def ours_all():
        engine.release(0)
        engine.eval(0, prompt)

    def ours_last():
        engine.release(0)
        engine.prefill(0, prompt)

    def theirs():
        llm.reset()
        llm.eval(prompt)

    return {name: len(prompt) / _timed(fn) for name, fn in
            [("ours_all_logits", ours_all), ("ours_last_logits", ours_last), ("llama", theirs)]}


def n_samples(engine, prompt: list[int], n: int, steps: int) -> dict:
    """N samples, each starting from one of the prompt's top-N tokens then greedy (so they differ)."""
    def firsts():
        engine.release(0)
        return [int(t) for t in np.argsort(engine.prefill(0, prompt)[-1])[::-1][:n]]

    def batched():
        tokens = firsts()
        for seq in range(1, n):
            engine.fork(0, seq)
        current = {seq: tokens[seq] for seq in range(n)}
        for _ in range(steps):
            out = engine.eval_batch({seq: [t] for seq, t in current.items()})
            current = {seq: int(np.argmax(rows[-1])) for seq, rows in out.items()}
        for seq in range(n):
            engine.release(seq)

    def sequential(reuse_prompt: bool):
        tokens = firsts()
        for first in tokens:
            if reuse_prompt:
                engine.fork(0, 1)
            else:
                engine.release(1)
                engine.prefill(1, prompt)
            token = first
            for _ in range(steps):
                token = int(np.argmax(engine.eval(1, [token])[-1]))
            engine.release(1)

    result = {"batched_s": _timed(batched), "sequential_prompt_reused_s": _timed(lambda: sequential(True)),
              "sequential_prompt_reread_s": _timed(lambda: sequential(False))}
    result["batched_vs_sequential_reread"] = result["batched_s"] / result["sequential_prompt_reread_s"]
    result["batched_vs_sequential_reused"] = result["batched_s"] / result["sequential_prompt_reused_s"]
    return result


def bench_quant(folder: Path, quant: str, args, bandwidth: float) -> dict:
    from edgetts.export.gguf import export_gguf
    from edgetts.runtimes.gguf_file import read_header
    from edgetts.runtimes.llamacpp import LlamaCppEngine

    path = folder.parent / f"{folder.name}.{quant}.gguf"
    export = None
    if not path.exists():
        export = export_gguf(folder, path, quant=quant, progress=False).to_dict()
    header = read_header(path)
    names = {t.name for t in header.tensors}
    # Decode reads every weight once per token; an untied embedding only one row of it.
    read = header.tensor_bytes - sum(t.nbytes for t in header.tensors
                                     if t.name == "token_embd.weight" and "output.weight" in names)
    rng = np.random.default_rng(0)
    vocab = min(10000, int(header.get("vocab_size", 0)) or 10000)

    def tokens(n):
        return [int(t) for t in rng.integers(4, vocab, size=n)]

    prompt, long_prompt = tokens(args.prompt), tokens(args.prefill)
    engine = LlamaCppEngine(path, n_ctx=1024, n_seq_max=args.n + 1, n_threads=args.threads)
    llm = _llama(path, args.threads, n_ctx=1024)
    ours_decode(engine, prompt, 8), llama_decode(llm, prompt, 8)  # warm-up
    ours, theirs, prefill = [], [], []
    pair = [(ours, lambda: ours_decode(engine, prompt, args.decode)),
            (theirs, lambda: llama_decode(llm, prompt, args.decode))]
    for run in range(args.runs):  # paired and in alternating order, so drift on a shared machine hits both alike
        for rates, decode_rate in pair if run % 2 == 0 else pair[::-1]:
            rates.append(decode_rate())
        if run < 3:  # 512-token prefills are long: three are enough for a median
            prefill.append(prefill_rates(engine, llm, long_prompt))
    del llm
    samples = n_samples(engine, tokens(args.n_prompt), args.n, args.n_tokens)
    engine.close()
    decode = statistics.median(ours)
    return {
        "gguf": str(path), "size_bytes": path.stat().st_size, "bits_per_weight": round(header.bits_per_weight, 3),
        "export": export,
        "decode_tok_s": {"ours": decode, "llama_generate": statistics.median(theirs), "ours_runs": ours,
                         "llama_runs": theirs},
        # the median of per-run ratios: a slow spell on this VM slows one pair, not the estimate
        "decode_ratio_ours_vs_llama": statistics.median(o / t for o, t in zip(ours, theirs)),
        "decode_ratio_of_medians": decode / statistics.median(theirs),
        "prefill_tok_s": {k: statistics.median(p[k] for p in prefill) for k in prefill[0]},
        "bytes_read_per_token": read,
        "decode_bandwidth_gbs": read * decode / 1e9,
        "decode_fraction_of_copy_bandwidth": read * decode / 1e9 / bandwidth,
        f"n{args.n}_samples_{args.n_tokens}_tokens": samples,
    }


def plot(result: dict, path: Path) -> None:
    """Decode tokens/s per quantization, ours vs Llama.generate (matplotlib, from the dev extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quants = list(result["quants"])
    ours = [result["quants"][q]["decode_tok_s"]["ours"] for q in quants]
    theirs = [result["quants"][q]["decode_tok_s"]["llama_generate"] for q in quants]
    x = np.arange(len(quants))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, ours, 0.4, label="edgetts LlamaCppEngine")
    ax.bar(x + 0.2, theirs, 0.4, label="llama-cpp-python Llama.generate")
    ax.set_xticks(x, quants)
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"shape-faithful Qwen2.5-0.5B, {result['threads']} threads (shared VM)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: shape-faithful Qwen2.5-0.5B in /tmp/edgetts-bench)")
    parser.add_argument("--quants", nargs="+", default=["q4_k_m", "q8_0"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--n-prompt", type=int, default=64)
    parser.add_argument("--n-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgetts.testing import shape_faithful_checkpoint

    folder = Path(args.model) if args.model else shape_faithful_checkpoint("qwen2.5-0.5b", "/tmp/edgetts-bench")
    bandwidth = copy_bandwidth_gbs()
    result = {
        "model": str(folder), "threads": args.threads, "runs": args.runs, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "note": "2-core VM: compare ratios measured in the same run, not absolutes",
        "copy_bandwidth_gbs_1thread": bandwidth, "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "quants": {},
    }
    for quant in args.quants:
        result["quants"][quant] = bench_quant(folder, quant, args, bandwidth)
        print(json.dumps({quant: {k: v for k, v in result["quants"][quant].items() if "runs" not in str(k)}}, indent=1, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

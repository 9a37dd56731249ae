"""Speculative decoding against plain decoding on the same engine, in the same run.

    python benchmarks/bench_speculative.py                       # embedded family + shape-faithful pair
    python benchmarks/bench_speculative.py --family shape --tokens 96 --repeats 3

Per family and drafter: speedup of end-to-end greedy generation (prefill included) over plain
decoding, absolute tokens/s of both, acceptance rate, mean drafts kept per target pass, and
whether the output equals plain greedy decoding token for token. Each drafter runs three ways
(MODES): with the drafter's policy kept across requests (as a server, and `edgetts run` through its
cache, run them), with a fresh policy per request (the first request on a device), and with the
switch disabled, which shows where speculation would hurt and what the switch saves. Plain and
speculative runs are interleaved, and each speedup is the median over repeats of plain ÷
speculative time within the repeat, because this machine is shared.

Families (llama.cpp engine, GGUF):
- embedded: the built-in generator (q8_0), its trained draft model, and its own first K layers
  (trained with early-exit losses), on arithmetic test prompts; with --runtime onnxruntime the
  generator runs as fp32 ONNX, and the same drafters also run on llama.cpp ("@llama.cpp",
  `edgetts run --draft-runtime llama.cpp`): a small model's step costs less there;
- shape: a shape-faithful Qwen2.5-0.5B (random weights, q4_0) with a 2-layer random draft of the
  same vocabulary and its own first 6 layers: random weights agree with nothing, so this is
  the case where model drafters hurt.
Writes benchmarks/results/speculative.json; checkpoints live in /tmp/edgetts-bench.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "speculative.json"
BENCH_ROOT = Path("/tmp/edgetts-bench")
# "switch": the drafter's own policy, kept across requests (a server; `edgetts run` keeps it in the
# cache between processes); "switch-fresh": a fresh policy per request (the first request ever on a
# device, which must pay for its probes); "no-switch": speculation always on.
MODES = {"switch": {}, "switch-fresh": dict(auto_off=True), "no-switch": dict(auto_off=False)}
EMBEDDED_KEYS = {"llama.cpp": "embedded", "onnxruntime": "embedded-onnx"}  # results key per engine
SHAPE_PROMPTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
]


def embedded_family(threads: int, layers: list[int], runtime: str = "llama.cpp") -> dict:
    from edgetts import arithmetic, embedded
    from edgetts.drafters import EarlyExitDrafter, ModelDrafter, NGramDrafter
    from edgetts.runtimes import load

    fmt = {"llama.cpp": "gguf", "onnxruntime": "onnx"}[runtime]
    options = dict(n_seq_max=1, n_ctx=1024, n_threads=threads, **({"device": "cpu"} if fmt == "onnx" else {}))
    target_path = embedded.artifact("generator", fmt)
    drafters = {"ngram": NGramDrafter}
    if "draft" in {m.name for m in embedded.list_models()}:  # trained after the generator; may not be here yet
        drafters["draft-model"] = lambda: ModelDrafter(load(embedded.artifact("draft", fmt), **options), "draft-model")
    for k in layers:
        drafters[f"early-exit:{k}"] = lambda k=k: EarlyExitDrafter.for_model(target_path, k, **options)
    if runtime != "llama.cpp":  # the same drafters on llama.cpp, whose small steps cost less (--draft-runtime)
        drafters.update(cross_runtime_drafters(target_path, layers, "draft-model" in drafters))
    problems = [p for p in arithmetic.split("test") if p.level >= 3][::12][:6]
    return dict(target=str(target_path), engine=load(target_path, **options), drafters=drafters,
                prompts=[p.prompt for p in problems])


def cross_runtime_drafters(target_path, layers: list[int], with_draft_model: bool) -> dict:
    """The draft model and the first-K-layers drafters on llama.cpp, one thread (`edgetts run
    --draft-runtime llama.cpp`'s default), for a target on another runtime."""
    from edgetts import embedded
    from edgetts.drafters import EarlyExitDrafter, ModelDrafter
    from edgetts.runner import DRAFT_THREADS
    from edgetts.runtimes import load

    options = dict(n_seq_max=1, n_ctx=1024, n_threads=DRAFT_THREADS)
    drafters = {f"early-exit:{k}@llama.cpp": lambda k=k: EarlyExitDrafter.for_model(target_path, k, "llama.cpp", **options)
                for k in layers}
    if with_draft_model:
        drafters["draft-model@llama.cpp"] = lambda: ModelDrafter(load(embedded.artifact("draft", "gguf"), **options),
                                                                 "draft-model@llama.cpp")
    return drafters


def shape_family(threads: int, layers: list[int]) -> dict:
    from edgetts.drafters import EarlyExitDrafter, ModelDrafter, NGramDrafter
    from edgetts.export import export
    from edgetts.runtimes.llamacpp import LlamaCppEngine
    from edgetts.testing import SHAPE_FAITHFUL_CONFIGS, shape_faithful_checkpoint, write_checkpoint

    source = shape_faithful_checkpoint("qwen2.5-0.5b", BENCH_ROOT)
    draft_source = BENCH_ROOT / "qwen2.5-0.5b-draft2l"
    if not (draft_source / "config.json").is_file():
        spec = dict(SHAPE_FAITHFUL_CONFIGS["qwen2.5-0.5b"], num_hidden_layers=2)
        draft_source.mkdir(parents=True, exist_ok=True)  # write_checkpoint copies the tokenizer in first
        write_checkpoint(draft_source, spec, seed=1, tokenizer_from=source)
    gguf = {}
    for name, src, k in [("target", source, None), ("draft", draft_source, None)] + [(f"ee{k}", source, k) for k in layers]:
        out = BENCH_ROOT / "spec" / (f"{src.name}.q4_0.layers{k}.gguf" if k else f"{src.name}.q4_0.gguf")
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            export(src, out, format="gguf", quant="q4_0", layers=k, progress=False)
        gguf[name] = out
    open_engine = lambda path: LlamaCppEngine(path, n_seq_max=1, n_ctx=1024, n_threads=threads)  # noqa: E731
    drafters = {"draft-model": lambda: ModelDrafter(open_engine(gguf["draft"]), "draft-model"), "ngram": NGramDrafter}
    for k in layers:
        drafters[f"early-exit:{k}"] = lambda k=k: EarlyExitDrafter(open_engine(gguf[f"ee{k}"]), k)
    return dict(target=str(gguf["target"]), engine=open_engine(gguf["target"]), drafters=drafters,
                prompts=SHAPE_PROMPTS)


def timed_generation(engine, prompt, tokens, drafter=None, **options):
    from edgetts.generate import generate

    start = time.perf_counter()
    r = generate(engine, prompt, max_tokens=tokens, chat=False, drafter=drafter, **options)
    return time.perf_counter() - start, r


def measure(family: dict, tokens: int, repeats: int) -> dict:
    """Interleave plain and speculative runs per prompt; medians of the per-repeat totals."""
    engine, prompts = family["engine"], family["prompts"]
    drafters = {name: make() for name, make in family["drafters"].items()}
    variants = [(name, mode) for name in drafters for mode in MODES]
    timing = {key: [] for key in ["plain", *variants]}
    runs = {key: [] for key in variants}
    plain_tokens, generated = {}, 0
    timed_generation(engine, prompts[0], 4)  # warm-up: page the weights in before anything is timed
    for drafter in drafters.values():
        timed_generation(engine, prompts[0], 4, drafter)
    for _ in range(repeats):
        totals = dict.fromkeys(timing, 0.0)
        for prompt in prompts:
            seconds, plain = timed_generation(engine, prompt, tokens)
            totals["plain"] += seconds
            plain_tokens[prompt] = plain.tokens
            for name, mode in variants:
                seconds, r = timed_generation(engine, prompt, tokens, drafters[name], **MODES[mode])
                totals[(name, mode)] += seconds
                runs[(name, mode)].append((prompt, r))
        generated = sum(len(t) for t in plain_tokens.values())
        for key, value in totals.items():
            timing[key].append(value)
    plain_s = statistics.median(timing["plain"])
    rows = [_row(name, mode, timing[(name, mode)], timing["plain"], generated, runs[(name, mode)], plain_tokens)
            for name, mode in variants]
    for drafter in drafters.values():
        drafter.close()
    engine.close()
    return dict(target=family["target"], prompts=len(prompts), tokens_per_prompt=tokens, repeats=repeats,
                plain_s=round(plain_s, 4), plain_tok_s=round(generated / plain_s, 2), drafters=rows)


def _row(name, mode, spec_runs, plain_runs, generated, runs, plain_tokens) -> dict:
    """Speedup: the median over repeats of plain / speculative time within the repeat, so a slow
    spell on this VM slows one pair, not the estimate."""
    spec_s = statistics.median(spec_runs)
    speedup = statistics.median(p / s for p, s in zip(plain_runs, spec_runs))
    drafted = sum(r.stats["drafted"] for _, r in runs)
    accepted = sum(r.stats["accepted"] for _, r in runs)
    rounds = sum(r.stats["rounds"] for _, r in runs)
    return dict(
        drafter=name, mode=mode, speedup=round(speedup, 3), tok_s=round(generated / spec_s, 2),
        acceptance_rate=round(accepted / drafted, 4) if drafted else None,
        mean_accepted=round(accepted / rounds, 3) if rounds else None,
        tokens_per_target_pass=round((accepted + rounds) / rounds, 3) if rounds else None,
        speculative_share=round(sum(r.stats["speculative_tokens"] for _, r in runs)
                                / max(1, sum(len(r.tokens) for _, r in runs)), 3),
        switched_off=sum(r.stats["switched_off"] for _, r in runs),
        equivalent=all(r.tokens == plain_tokens[prompt] for prompt, r in runs),
    )


def goals(results: dict) -> dict:
    """The issue's goals, checked against what was measured."""
    def best(family, prefix):
        rows = [r for r in results.get(family, {}).get("drafters", []) if r["drafter"].startswith(prefix) and r["mode"] != "no-switch"]
        return max((r["speedup"] for r in rows), default=None)

    def floor(mode):
        return min((r["speedup"] for fam in results.values() for r in fam.get("drafters", []) if r["mode"] == mode),
                   default=None)

    return {
        "draft_model_embedded_>=1.5x": {engine: best(fam, "draft-model") for engine, fam in EMBEDDED_KEYS.items()},
        "early_exit_embedded_>=1.2x": {engine: best(fam, "early-exit") for engine, fam in EMBEDDED_KEYS.items()},
        "never_below_0.95x_with_switch": floor("switch"),
        "first_request_fresh_policy_min": floor("switch-fresh"),
        "all_outputs_equivalent": all(r["equivalent"] for fam in results.values() for r in fam.get("drafters", [])),
    }


def plot(results: dict, path: Path) -> None:
    """Speedup per drafter and mode, one panel per family; the 1.0 line is plain decoding."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (family, data) in zip(axes[0], results.items()):
        names = sorted({r["drafter"] for r in data["drafters"]})
        for i, mode in enumerate(MODES):
            speed = [next(r["speedup"] for r in data["drafters"] if r["drafter"] == n and r["mode"] == mode) for n in names]
            ax.bar([x + 0.27 * (i - 1) for x in range(len(names))], speed, width=0.27, label=mode)
        ax.axhline(1.0, color="black", lw=1)
        ax.axhline(0.95, color="grey", lw=1, ls="--")
        ax.set_xticks(range(len(names)), names)
        ax.set_title(f"{family}: plain {data['plain_tok_s']} tok/s")
        ax.set_ylabel("speedup over plain decoding")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def quarter_and_half() -> list[int]:
    """Early-exit depths for the built-in generator: a quarter and a half of its layers."""
    from edgetts import embedded

    n = json.loads((embedded.path("generator") / "config.json").read_text())["num_hidden_layers"]
    return sorted({max(1, n // 4), max(1, n // 2)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["embedded", "shape", "all"], default="all")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="1 is steady on a busy machine (see ANCHORS.md)")
    parser.add_argument("--layers", default=None, help="early-exit depths, e.g. 2,3 (default: per family)")
    parser.add_argument("--runtime", choices=["llama.cpp", "onnxruntime"], default="llama.cpp",
                        help="engine for the embedded family (the shape pair runs on llama.cpp)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedded_build = lambda threads, layers: embedded_family(threads, layers, args.runtime)  # noqa: E731
    families = {"embedded": (embedded_build, None), "shape": (shape_family, [6])}  # None: a quarter and a half
    results = json.loads(RESULTS.read_text()).get("families", {}) if RESULTS.exists() else {}
    for name, (build, default_layers) in families.items():
        if args.family not in (name, "all"):
            continue
        layers = [int(k) for k in args.layers.split(",")] if args.layers else default_layers or quarter_and_half()
        key = EMBEDDED_KEYS[args.runtime] if name == "embedded" else name
        results[key] = measure(build(args.threads, layers), args.tokens, args.repeats)
        name = key
        results[name]["command"] = "python benchmarks/bench_speculative.py " + " ".join(sys.argv[1:])
        print(json.dumps({name: results[name]}, indent=1))
    out = dict(machine=dict(platform=platform.platform(), cpus=os.cpu_count(), threads=args.threads,
                            note="shared 2-core VM: compare ratios measured in the same run"),
               families=results, goals=goals(results))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    plot(results, RESULTS.with_suffix(".png"))
    print(json.dumps(out["goals"], indent=1))


if __name__ == "__main__":
    main()

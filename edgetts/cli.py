"""The `edgetts` command. The root only wires commands; each body calls one library function."""

from __future__ import annotations

import os
import sys

import typer

from edgetts.cli_options import (DeviceOpt, DraftOpt, DraftRuntimeOpt, DraftThreadsOpt, JsonOpt, LimitOpt,
                                 MaxTokensOpt, ModelOpt, NOpt, RuntimeOpt, SeedOpt, StopOpt, TemperatureOpt,
                                 ThreadsOpt, TopPOpt)
from edgetts.errors import EdgettsError

app = typer.Typer(
    name="edgetts",
    help="Small language models on edge devices that answer better inside a latency budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich doubles `edgetts --help` time
)

# Ordered: the first matching type decides the message. Each says how to fix the problem.
USER_ERRORS: list[tuple[type[BaseException], str]] = [
    (EdgettsError, "{exc}"),
    (MemoryError, "out of memory: try a smaller quantization (--quant q4_0), a shorter context or fewer samples"),
    (KeyboardInterrupt, "interrupted"),
]


def _version(value: bool) -> None:
    if value:
        from edgetts import __version__

        typer.echo(f"edgetts {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Export models to GGUF/ONNX, run them on this device, and plan test-time scaling from measured latency.

    Set EDGETTS_DEBUG=1 to see tracebacks.
    """


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Report this machine (CPU features, cores, memory) and which engines work, with the fix for each missing one."""
    from edgetts.doctor import report
    from edgetts.ui import print_doctor

    data = report()
    if as_json:
        import json

        typer.echo(json.dumps(data, indent=2))
    else:
        print_doctor(data)


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="A local Hugging Face folder (or a hub id when online)."),
    out: str = typer.Option(..., "--out", "-o", help="Output: a .gguf file, or a folder for ONNX."),
    format: str = typer.Option("gguf", "--format", "-f", help="gguf (llama.cpp) or onnx (ONNX Runtime)."),
    quant: str = typer.Option(None, "--quant", "-q", help="gguf: f32 f16 bf16 q8_0 q6_k q5_k_m q4_k_m q4_0; onnx: fp32 fp16 int8 int4 (default; options as int4:block_size=32,accuracy_level=4)."),
    layers: int = typer.Option(None, "--layers", help="Keep only the first K layers (+ final norm + LM head): an early-exit drafter."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
) -> None:
    """Export a Hugging Face checkpoint to a quantized GGUF file or ONNX folder.

    Example: edgetts export ./my-model --format gguf --quant q4_0 --out my-model.q4_0.gguf
    """
    from edgetts.export import export

    report = export(model, out, format=format, quant=quant, layers=layers, overwrite=overwrite)
    bpw = f", {report.bits_per_weight:.2f} bits/weight" if report.bits_per_weight else ""
    typer.echo(f"wrote {report.path} ({report.quant}, {report.size_bytes / 1e6:.1f} MB{bpw}) in {report.seconds:.1f}s")


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """List the built-in models (no download): the arithmetic generator, its draft and its verifier."""
    from edgetts.embedded import list_models, table

    if as_json:
        import json

        typer.echo(json.dumps([m.to_dict() for m in list_models()], indent=2))
    else:
        typer.echo("\n".join(table()) or "no built-in models in this installation; reinstall edgetts")


def parse_budget(text: str) -> float:
    """Seconds from "2", "2s", "1.5s" or "500ms"."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(f"{text!r} is not a budget; write seconds or milliseconds, e.g. 2s, 1.5 or 500ms")
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


@app.command()
def run(
    prompt: str = typer.Argument(..., help="The question or text to continue."),
    model: str = ModelOpt, draft: str = DraftOpt, temperature: float = TemperatureOpt, top_p: float = TopPOpt,
    max_tokens: int = MaxTokensOpt, seed: int = SeedOpt, n: int = NOpt, stop: list[str] = StopOpt,
    runtime: str = RuntimeOpt, device: str = DeviceOpt, threads: int = ThreadsOpt, as_json: bool = JsonOpt,
    draft_runtime: str = DraftRuntimeOpt, draft_threads: int = DraftThreadsOpt,
    stats: bool = typer.Option(False, "--stats", help="Print tokens/s and the drafter's acceptance rate."),
    budget: str = typer.Option(None, "--budget", "-b", help="Answer within this latency (2s, 500ms): the controller "
                               "plans samples, verifier and aggregation from this device's measured speed."),
) -> None:
    """Generate an answer, streamed to the terminal; --draft decodes speculatively; --budget plans test-time scaling.

    Example: edgetts run "What is 37*48+15?" --budget 2s
    """
    from edgetts.runner import print_result, run as run_prompt
    from edgetts.types import SamplingParams

    if budget is not None:
        from edgetts.session import solve_cli
        from edgetts.ui import print_answer

        print_answer(solve_cli(prompt, parse_budget(budget), model, runtime, n, draft, max_tokens, seed),
                     as_json)
        return

    params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    stream = None if as_json or n > 1 else lambda text: typer.echo(text, nl=False)
    result = run_prompt(prompt, model, draft, params, max_tokens, n, tuple(stop or ()), runtime=runtime,
                        device=device, threads=threads, on_text=stream, draft_runtime=draft_runtime,
                        draft_threads=draft_threads)
    print_result(result, as_json=as_json, streamed=stream is not None, stats=stats)


@app.command("profile")
def profile_cmd(
    model: str = ModelOpt, runtime: str = RuntimeOpt,
    out: str = typer.Option(None, "--out", "-o", help="Write the TOML here instead of the cache directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON."),
) -> None:
    """Measure this device for a model (+ its verifier): prefill, decode at batch 1-16, verifier cost, load time."""
    import json
    import time

    from edgetts.profile import to_toml_dict
    from edgetts.session import ensure_profile, open_family

    start = time.perf_counter()
    profile, path = ensure_profile(open_family(model, runtime), remeasure=True, progress=True, path=out)
    if as_json:
        typer.echo(json.dumps(to_toml_dict(profile), indent=2))
        return
    typer.echo(f"{profile.speed_summary()}; load {profile.load_seconds:.2f}s")
    if profile.has_verifier:
        typer.echo(f"verifier: {profile.verifier_fixed * 1e3:.1f} ms + {profile.verifier_per_candidate * 1e3:.2f} ms per candidate")
    typer.echo(f"wrote {path} in {time.perf_counter() - start:.1f}s")


@app.command()
def calibrate(
    model: str = ModelOpt, runtime: str = RuntimeOpt,
    data: str = typer.Option(None, "--data", help="JSONL of {\"prompt\", \"answer\"}; default: the embedded task's "
                             "calibration split (dev + 800 more, 1000 problems)."),
    n: int = typer.Option(32, "--n", help="Samples per problem (>= 2x the largest N you want planned)."),
    limit: int = LimitOpt,
    temperature: float = typer.Option(0.7, "--temperature", help="Sampling temperature the plans will use."),
    min_p: float = typer.Option(0.2, "--min-p", help="Min-p filter the plans will use (0: off): drops unlikely slips, keeps the likely paths."),
    max_tokens: int = typer.Option(160, "--max-tokens", help="Longest answer drawn while calibrating."),
    reuse: bool = typer.Option(False, "--reuse-samples", help="Re-fit from the samples saved last time (model verifiers they lack score them; programmatic checkers re-score them all)."),
) -> None:
    """Fit accuracy per strategy and N, coverage, verifier quality and answer lengths; save beside the profile."""
    from edgetts.session import calibrate as fit_calibration
    from edgetts.session import labelled_problems, open_family
    from edgetts.ui import TaskProgress

    family = open_family(model, runtime)
    with TaskProgress() as progress:
        problems = labelled_problems(data, split="calibration", limit=limit)
        cal, path = fit_calibration(family, problems, n=n, temperature=temperature, min_p=min_p,
                                    max_tokens=max_tokens, progress=progress, reuse_samples=reuse)
    greedy, best = cal.plans["greedy|1|1|"].accuracy, max(cal.plans.items(), key=lambda kv: kv[1].accuracy)
    typer.echo(f"{cal.n_problems} problems x {cal.samples_per_problem} samples: greedy {greedy:.1%}, best plan "
               f"{best[0]} {best[1].accuracy:.1%}, pass@{cal.samples_per_problem} {cal.coverage['pass_at_k'][-1]:.1%}")
    for name, q in cal.verifiers.items():
        typer.echo(f"verifier {name}: AUROC {q['auroc']:.3f}, TPR {q['tpr']:.2f}, FPR {q['fpr']:.2f}")
    typer.echo(f"wrote {path}")


@app.command()
def bench(
    model: str = ModelOpt, runtime: str = RuntimeOpt,
    data: str = typer.Option(None, "--data", help="JSONL of {\"prompt\", \"answer\"}; default: the embedded test split."),
    limit: int = LimitOpt,
    multiples: str = typer.Option("1,2,4,8,16,30", "--budgets", help="Budgets as multiples of greedy's median latency."),
    out: str = typer.Option("benchmarks/results/controller.json", "--out", "-o", help="JSON path; the plot goes beside it (.png)."),
    seeds: int = typer.Option(1, "--seeds", help="Run everything this many times on different samples and average "
                              "the accuracies (one seed's luck moves a 200-problem score by ~2 points)."),
) -> None:
    """Accuracy and p50/p95 latency of greedy, majority@N, best-of-N@N and the controller across budgets."""
    import json
    from pathlib import Path

    from edgetts.bench import plot, run_bench
    from edgetts.session import controller_for, labelled_problems, open_family, same_answer
    from edgetts.ui import TaskProgress

    problems = labelled_problems(data, split="test", limit=limit)
    controller = controller_for(open_family(model, runtime), progress=True)
    with TaskProgress() as progress:
        result = run_bench(controller, problems, same_answer, [float(m) for m in multiples.split(",")],
                           progress=progress, seeds=seeds)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    plot(result, path.with_suffix(".png"))
    for row in result["goals"]["by_budget"]:
        typer.echo(f"budget {row['budget_s']:.3f}s ({row['budget_x_greedy']}x greedy): controller "
                   f"{row['controller_accuracy']:.1f}% vs best fixed {row['best_fixed']} {row['best_fixed_accuracy']}%, "
                   f"p95/budget {row['p95_over_budget']:.2f}, |pred err| {row['median_abs_pred_error']:.1%}, over budget: "
                   f"controller {row['controller_over_budget']:.0%}, best fixed "
                   f"{'-' if row['best_fixed_over_budget'] is None else format(row['best_fixed_over_budget'], '.0%')}")
    typer.echo(f"wrote {path} and {path.with_suffix('.png')}")


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv)
    except tuple(t for t, _ in USER_ERRORS) as exc:
        if os.environ.get("EDGETTS_DEBUG"):
            raise
        message = next(m for t, m in USER_ERRORS if isinstance(exc, t))
        print(f"error: {message.format(exc=exc)}", file=sys.stderr)
        sys.exit(130 if isinstance(exc, KeyboardInterrupt) else 1)


if __name__ == "__main__":
    main()

"""The `edgetts` command. The root only wires commands; each body calls one library function."""

from __future__ import annotations

import os
import sys

import typer

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
    quant: str = typer.Option(None, "--quant", "-q", help="gguf: f32 f16 bf16 q8_0 q6_k q5_k_m q4_k_m q4_0; onnx: fp32 fp16 int8 int4."),
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

"""Options shared by several `edgetts` commands, defined once so they read the same everywhere."""

from __future__ import annotations

import typer

ModelOpt = typer.Option(None, "--model", "-m", help="A .gguf, ONNX folder or HF folder; default: the embedded family.")
RuntimeOpt = typer.Option(None, "--runtime", help="llama.cpp, onnxruntime or torch (default: detected from the model).")
DeviceOpt = typer.Option(None, "--device", help="Where to run, e.g. cpu, cuda:0 (default: the engine's choice).")
DraftOpt = typer.Option(
    None, "--draft",
    help="Speculative decoding: a draft model PATH, ngram (prompt lookup) or early-exit:K (the model's first K layers).",
)
DraftRuntimeOpt = typer.Option(
    None, "--draft-runtime",
    help="Run the drafter on another runtime than the model, e.g. an ONNX model drafted for by llama.cpp, "
         "whose small steps cost less (default: the model's runtime for early-exit:K, the file's own for a PATH).",
)
DraftThreadsOpt = typer.Option(1, "--draft-threads", help="CPU threads for the drafter (1: it leaves the cores to the model).")
TemperatureOpt = typer.Option(0.0, "--temperature", "-t", help="0 is greedy (argmax).")
TopPOpt = typer.Option(1.0, "--top-p", help="Nucleus sampling: keep the most likely tokens up to this mass.")
MaxTokensOpt = typer.Option(256, "--max-tokens", help="Stop after this many generated tokens.")
SeedOpt = typer.Option(None, "--seed", help="Seed for sampling; sample i of --n uses seed+i (with --budget: wave k of n samples uses seed+n+100003k).")
NOpt = typer.Option(1, "--n", help="Number of samples, decoded together from one prompt prefill.")
StopOpt = typer.Option(None, "--stop", help="Stop at this text (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object instead of streaming text.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for the engine (default: the engine's; 1 is steadiest on a busy machine).")
LimitOpt = typer.Option(None, "--limit", help="Use only this many problems (spread over the set).")

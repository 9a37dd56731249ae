"""Terminal rendering (rich), kept apart from the library so the API never prints."""

from __future__ import annotations


def print_doctor(data: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    cpu, mem = data["cpu"], data["memory"]
    console.print(f"[bold]edgetts {data['edgetts']}[/] · Python {data['python']} · {data['os']} ({data['machine']})")
    console.print(f"CPU: {cpu['model']} · {cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores "
                  f"({cpu['usable_cores']} usable) · features: {' '.join(cpu['features']) or 'none detected'}")
    console.print(f"Memory: {mem['total_gb']} GB total, {mem['available_gb']} GB available")
    table = Table("component", "version", "status", "for")
    for c in data["components"]:
        status = "[green]ok[/]" if c["ok"] else f"[red]missing[/] → {c['fix']}"
        table.add_row(c["name"], c["version"] or "-", status, c["purpose"])
    console.print(table)
    if data["llama_cpp"]:
        offload = "yes" if data["llama_cpp"]["gpu_offload"] else "no (CPU-only build)"
        console.print(f"llama.cpp: GPU offload {offload}\n  {data['llama_cpp']['system_info']}")
    if data["onnxruntime"]:
        console.print(f"ONNX Runtime providers: {', '.join(data['onnxruntime']['providers'])}")
        by_name = data["onnxruntime"].get("devices_by_name", {})
        falls = [f"{d} (install {e['install']})" for d, e in by_name.items() if e["runs_on"] != e["provider"]]
        ready = [d for d, e in by_name.items() if e["runs_on"] == e["provider"]]
        if by_name:
            console.print(f"  --device ready: {', '.join(ready)}; falls back to CPU: {', '.join(falls) or 'none'}")


class TaskProgress:
    """A rich progress bar on stderr driven by `callback(label, done, total)`; use as a context manager."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        self._tasks: dict[str, int] = {}
        return self.callback

    def callback(self, label: str, done: int, total: int) -> None:
        if label not in self._tasks:
            self._tasks[label] = self._bar.add_task(label, total=total)
        self._bar.update(self._tasks[label], completed=done)

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)


def print_answer(result: dict, as_json: bool) -> None:
    """`edgetts run --budget`: the answer, the plan it came from, predicted vs actual latency."""
    import json

    if as_json:
        print(json.dumps({**result, "plan": result["plan"]["name"], "plan_detail": result["plan"]}, indent=2))
        return
    print(result["text"].strip() or "(no answer within the budget)")
    print(f"\nplan: {result['explanation']}")
    print(f"latency: predicted {result['predicted_latency_s']:.3f}s, actual {result['latency_s']:.3f}s "
          f"({result['samples']} samples, stop: {result['stop_reason']})")

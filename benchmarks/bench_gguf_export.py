"""Wall time and peak RSS of `edgetts export` to GGUF, against the source checkpoint's size on disk.

    python benchmarks/bench_gguf_export.py --quants q4_k_m q8_0 q4_0

Each export runs in its own process, which reports its own peak RSS (getrusage ru_maxrss).
Goal: peak RSS <= 1.2 x the source size (tensors are streamed). Writes benchmarks/results/gguf_export.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "gguf_export.json"


def measure(folder: Path, quant: str, out: Path) -> dict:
    """One export in a child process: wall seconds, peak RSS, size and bits per weight."""
    code = ("import sys, json, resource; from edgetts.export import export; "
            "r = export(sys.argv[1], sys.argv[2], format='gguf', quant=sys.argv[3], overwrite=True, progress=False); "
            "print(json.dumps({**r.to_dict(), 'maxrss_kb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(out), quant], check=True,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_bytes": report.pop("maxrss_kb") * 1024, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF folder (default: shape-faithful Qwen2.5-0.5B in /tmp/edgetts-bench)")
    parser.add_argument("--quants", nargs="+", default=["q4_k_m"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from edgetts.export.source import Checkpoint
    from edgetts.testing import shape_faithful_checkpoint

    folder = Path(args.model) if args.model else shape_faithful_checkpoint("qwen2.5-0.5b", "/tmp/edgetts-bench")
    source = Checkpoint(folder).size_bytes
    result = {"model": str(folder), "source_bytes": source, "note": "shared 2-core VM: wall times are noisy",
              "exports": {}}
    for quant in args.quants:
        run = measure(folder, quant, folder.parent / f"{folder.name}.{quant}.gguf")
        run["peak_rss_vs_source"] = run["peak_rss_bytes"] / source
        result["exports"][quant] = run
        print(f"{quant}: {run['wall_s']:.1f}s, peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB "
              f"({run['peak_rss_vs_source']:.2f}x source), {run['report']['bits_per_weight']} bits/weight")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

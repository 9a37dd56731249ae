"""The controller against fixed N-sample strategies at chosen absolute budgets, over several seeds.

    python benchmarks/bench_controller_budget.py                       # N = 8 at 0.085 s and 0.090 s, seeds 0-4
    python benchmarks/bench_controller_budget.py --n 4 --budgets 0.05 --seeds 3

`edgetts bench` sets its budgets as multiples of greedy's median, which moves ±10 % from run to
run, so a fixed strategy whose p95 sits near 8x greedy fits that budget in one run and not in the
next. This one holds the budgets fixed and runs the fixed strategies of one N and the controller
on the same seeds (common random numbers, as `edgetts bench`), so the two can be compared where
the fixed strategy fits. Writes JSON laid out like `edgetts bench`'s, goal checks included
(default `benchmarks/results/controller_budget.json`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=8, help="samples of the fixed strategies")
    parser.add_argument("--budgets", default="0.085,0.090", help="budgets in seconds, comma-separated")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/controller_budget.json")
    args = parser.parse_args(argv)

    from edgetts import bench, session

    started = time.time()
    controller = session.controller_for(session.open_family(None, None), progress=True)
    problems = session.labelled_problems(split="test")
    seeds = range(args.seeds)
    fixed = bench.run_fixed(controller, problems, session.same_answer, ns=(args.n,), seeds=seeds)
    runs = [bench.run_controller(controller, problems, float(b), session.same_answer, seeds=seeds)
            for b in args.budgets.split(",")]
    # the same layout and goal checks as `edgetts bench` (bench.compare names the best fixed that fits)
    result = {"problems": len(problems), "seeds": args.seeds, "n": args.n, "fixed": fixed, "controller": runs,
              "goals": bench.compare(fixed, runs), "seconds": round(time.time() - started)}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    for row in result["goals"]["by_budget"]:
        print(f"{row['budget_s']:.3f}s: controller {row['controller_accuracy']}% (p95/budget {row['p95_over_budget']}) "
              f"vs best fixed that fits {row['best_fixed']} {row['best_fixed_accuracy']}%")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

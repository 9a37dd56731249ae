"""`edgetts bench`: accuracy vs latency of fixed strategies and of the controller, on a test split.

Fixed strategies run as served (prompt -> samples -> verifier -> answer, wall-clock timed): greedy,
majority@N and best-of-N@N by each verifier for N in {2, 4, 8, 16}, and, where the controller
samples with step repair, majority@N+repair (the same vote over repaired samples). The controller
then answers every problem at budgets from greedy's median latency up to ~30x it. The result
names, per budget, the best fixed strategy whose p95 latency fits, and checks the controller
against it.

Both sides draw from common random numbers: problem i's majority@N draws with seed
`problem_seed(i) + N`, and the controller's request for it is seeded with `problem_seed(i)`, so a
first wave of N samples is the very sample set the fixed majority@N voted on. A difference between
them is then the plan's, not sampling luck (one seed's luck moves a 200-problem score by 1-2 points).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edgetts.controller import Controller
from edgetts.strategies import aggregate
from edgetts.types import SamplingParams

MULTIPLES = (1, 2, 4, 8, 16, 30)
FIXED_N = (2, 4, 8, 16)


def problem_seed(i: int, seed: int = 0) -> int:
    """The base seed of problem i's draws (the fixed strategies add N; the controller, its wave size)."""
    return seed * 7919 + i * 131


def _requests(problems: Sequence[tuple[str, str]], seeds: Sequence[int]) -> list[tuple[int, str, str]]:
    """(base seed, prompt, truth) of every request a bench run makes: each problem once per seed."""
    return [(problem_seed(i, seed), prompt, truth) for seed in seeds for i, (prompt, truth) in enumerate(problems)]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(max(int(round(q * (len(ordered) - 1))), 0), len(ordered) - 1)
    return ordered[index]


def _summary(name: str, correct: list[bool], latencies: list[float], seeds: int = 1, **extra) -> dict:
    """Accuracy over every request (with several seeds: their mean, each seed's in `accuracy_by_seed`),
    latency percentiles over all of them pooled."""
    size = len(correct) // seeds
    by_seed = [round(100 * sum(correct[k * size:(k + 1) * size]) / size, 2) for k in range(seeds)]
    return {"name": name, "accuracy": round(100 * sum(correct) / len(correct), 2),
            **({"accuracy_by_seed": by_seed} if seeds > 1 else {}),
            "p50_s": round(percentile(latencies, 0.5), 4), "p95_s": round(percentile(latencies, 0.95), 4),
            "n": len(correct), **extra, "latencies_s": [round(x, 4) for x in latencies]}


def _over(summary: dict | None, budget: float) -> float | None:
    """Share of a run's requests that took longer than `budget` (p95 alone hides how far the tail runs)."""
    times = (summary or {}).get("latencies_s")
    return round(sum(t > budget for t in times) / len(times), 3) if times else None


def run_fixed(controller: Controller, problems: Sequence[tuple[str, str]], is_correct: Callable,
              ns: Sequence[int] = FIXED_N, seeds: Sequence[int] = (0,), progress=None) -> list[dict]:
    """Greedy, majority@N and best-of-N@N (each verifier), every problem run as it would be served,
    once per seed."""
    from edgetts.generate import prompt_tokens, sample_n

    engine, cal = controller.engine, controller.calibration
    max_tokens = controller.plan(16, 1e9).max_tokens
    outcomes: dict[str, tuple[list[bool], list[float]]] = {}

    def record(name, answer, seconds):
        hits, times = outcomes.setdefault(name, ([], []))
        hits.append(is_correct(answer, truth))
        times.append(seconds)

    runs = _requests(problems, seeds)
    for done, (base_seed, prompt, truth) in enumerate(runs, 1):
        start = time.perf_counter()
        ids = prompt_tokens(engine.tokenizer, prompt)
        greedy = sample_n(engine, ids, 1, SamplingParams(temperature=0.0), max_tokens)
        record("greedy", aggregate("single", greedy, extract=controller.extract).answer, time.perf_counter() - start)
        controller.observe_wave(len(ids), greedy, time.perf_counter() - start)  # serving keeps the profile fresh
        for n in ns:
            params = cal.sampling(seed=base_seed + n)
            for repair in (None, controller.repair) if controller.repair else (None,):
                start = time.perf_counter()
                ids = prompt_tokens(engine.tokenizer, prompt)
                samples = sample_n(engine, ids, n, params, max_tokens, repair=repair)
                sampled = time.perf_counter() - start
                controller.observe_wave(len(ids), samples, sampled)
                vote = aggregate("majority", samples, extract=controller.extract).answer
                record(f"majority@{n}" + ("+repair" if repair else ""), vote, time.perf_counter() - start)
                if repair:
                    continue  # repaired samples pass the step checker: the vote is the plan to compare
                for name, verifier in controller.verifiers.items():
                    began = time.perf_counter()
                    scores = verifier.score(prompt, [c.text for c in samples])
                    choice = aggregate("best_of_n", samples, scores, extract=controller.extract)
                    record(f"best_of_n@{n}+{name}", choice.answer, sampled + time.perf_counter() - began)
        if progress:
            progress("fixed strategies", done, len(runs))
    return [_summary(name, hits, times, len(seeds)) for name, (hits, times) in outcomes.items()]


def run_controller(controller: Controller, problems: Sequence[tuple[str, str]], budget: float,
                   is_correct: Callable, progress=None, seeds: Sequence[int] = (0,)) -> dict:
    correct, latencies, errors, decisions, plans = [], [], [], [], {}
    runs = _requests(problems, seeds)
    for done, (base_seed, prompt, truth) in enumerate(runs, 1):
        answer = controller.solve(prompt, budget, truth=truth, seed=base_seed)
        correct.append(is_correct(answer.answer, truth))
        latencies.append(answer.latency_s)
        errors.append(abs(answer.predicted_latency_s - answer.latency_s) / answer.latency_s)
        decisions.append(answer.decision_ms)
        plans[answer.plan.name] = plans.get(answer.plan.name, 0) + 1
        if progress:
            progress(f"controller @ {budget:.2f}s", done, len(runs))
    return _summary(f"controller@{budget:.3f}s", correct, latencies, len(seeds), budget_s=round(budget, 4),
                    median_abs_pred_error=round(statistics.median(errors), 4),
                    decision_ms_median=round(statistics.median(decisions), 3),
                    decision_ms_p95=round(percentile(decisions, 0.95), 3),
                    plans=dict(sorted(plans.items(), key=lambda kv: -kv[1])))


def compare(fixed: list[dict], controller: list[dict]) -> dict:
    """Per budget: the best fixed strategy whose p95 fits, and whether each goal holds."""
    greedy = next(f for f in fixed if f["name"] == "greedy")
    rows, errors = [], []
    for c in controller:
        fits = [f for f in fixed if f["p95_s"] <= c["budget_s"]]
        best = max(fits, key=lambda f: f["accuracy"], default=None)
        multiple = c["budget_s"] / greedy["p50_s"]
        rows.append({
            "budget_s": c["budget_s"], "budget_x_greedy": round(multiple, 2), "controller_accuracy": c["accuracy"],
            "best_fixed": best["name"] if best else None, "best_fixed_accuracy": best["accuracy"] if best else None,
            "vs_best_fixed": round(c["accuracy"] - best["accuracy"], 2) if best else None,
            "meets_best_fixed": best is None or c["accuracy"] >= best["accuracy"] - 1.0,
            "vs_greedy": round(c["accuracy"] - greedy["accuracy"], 2),
            "meets_greedy_plus_10": multiple < 8 or c["accuracy"] >= greedy["accuracy"] + 10,
            "p95_over_budget": round(c["p95_s"] / c["budget_s"], 3),
            "controller_over_budget": _over(c, c["budget_s"]), "best_fixed_over_budget": _over(best, c["budget_s"]),
            "meets_p95": c["p95_s"] <= 1.1 * c["budget_s"],
            "median_abs_pred_error": c["median_abs_pred_error"],
        })
        errors.append(c["median_abs_pred_error"])
    return {"by_budget": rows, "all_meet_best_fixed": all(r["meets_best_fixed"] for r in rows),
            "all_meet_greedy_plus_10": all(r["meets_greedy_plus_10"] for r in rows),
            "all_meet_p95": all(r["meets_p95"] for r in rows),
            "median_abs_pred_error_overall": round(statistics.median(errors), 4) if errors else None}


def run_bench(controller: Controller, problems: Sequence[tuple[str, str]], is_correct: Callable,
              multiples: Sequence[float] = MULTIPLES, ns: Sequence[int] = FIXED_N, progress=None,
              seeds: int = 1) -> dict:
    """`seeds` > 1 runs every fixed strategy and every budget that many times on different samples
    (each accuracy is then the mean; latency percentiles pool all runs): one seed's luck moves a
    200-problem score by about 2 points."""
    started = time.time()
    fixed = run_fixed(controller, problems, is_correct, ns, seeds=range(seeds), progress=progress)
    greedy_p50 = next(f for f in fixed if f["name"] == "greedy")["p50_s"]
    budgets = [m * greedy_p50 for m in multiples]
    results = [run_controller(controller, problems, b, is_correct, progress, seeds=range(seeds)) for b in budgets]
    return {
        "machine": _machine(), "engine": controller.engine.info.to_dict(),
        "profile": controller.profile.name, "calibration": {"source": controller.calibration.source,
                                                             "n_problems": controller.calibration.n_problems},
        "problems": len(problems), "seeds": seeds, "greedy_p50_s": greedy_p50, "multiples": list(multiples),
        "fixed": fixed, "controller": results, "goals": compare(fixed, results),
        "seconds": round(time.time() - started, 1),
    }


def _machine() -> dict:
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": load,
            "note": "shared 2-core VM: other jobs ran alongside; latencies are wall-clock as served"}


# --- plot -------------------------------------------------------------------------------------------

def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another that is both at least as fast and at least as accurate."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def plot(result: dict, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    families = {"greedy": "k", "majority": "tab:blue", "best_of_n": "tab:orange"}
    for f in result["fixed"]:
        color = next((c for prefix, c in families.items() if f["name"].startswith(prefix)), "tab:gray")
        marker = "s" if "+steps" in f["name"] else "^" if "+repair" in f["name"] else "o"
        ax.scatter(f["p95_s"], f["accuracy"], color=color, marker=marker, s=30, zorder=3)
        ax.annotate(f["name"], (f["p95_s"], f["accuracy"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    front = pareto([(f["p95_s"], f["accuracy"]) for f in result["fixed"]])
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="tab:gray", ls="--",
            label="Pareto frontier of fixed strategies")
    ctl = result["controller"]
    ax.plot([c["p95_s"] for c in ctl], [c["accuracy"] for c in ctl], "-D", color="tab:red", label="controller")
    for c in ctl:
        ax.axvline(c["budget_s"], color="tab:red", alpha=0.12)
    ax.set_xscale("log")
    ax.set_xlabel("p95 latency (s, log scale); faint lines = controller budgets")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_title(f"edgetts controller vs fixed strategies ({result['problems']} problems)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out

"""Measure the built-in models on the held-out test split: `python -m edgetts.embedded.evaluate`.

Writes benchmarks/results/embedded.json (and embedded_passk.png): greedy accuracy by level;
majority@k, pass@k for k = 1..64 with the fit c(k) ~ exp(a * k^b); verifier AUROC and best-of-16;
early-exit top-1 agreement per layer K; draft agreement and accuracy. All with torch on CPU, batched.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

from edgetts import arithmetic
from edgetts.calibration import auroc as calibration_auroc
from edgetts.calibration import MIN_P, TEMPERATURE, fit_coverage, pass_at_k
from edgetts.embedded import VERIFIER_SUFFIX, VERIFIER_WORDS, path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
MAX_NEW_TOKENS = 140  # the longest test solution is ~115 tokens; looping samples stop here


def load(name: str):
    """(model, tokenizer) of built-in `name`, in eval mode, float32."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    folder = path(name)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, Tokenizer.from_file(str(folder / "tokenizer.json"))


def sample(model, tok, prompts: list[str], n: int = 1, temperature: float = 0.0, seed: int = 0,
           max_new_tokens: int = 160, batch: int = 128, min_p: float = 0.0) -> list[list[str]]:
    """n completions per prompt (greedy when temperature is 0), generated in left-padded batches."""
    import torch

    eos = tok.token_to_id("<|endoftext|>")
    rows = [(i, tok.encode(p).ids) for i, p in enumerate(prompts) for _ in range(n)]
    out: list[list[str]] = [[] for _ in prompts]
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        width = max(len(ids) for _, ids in chunk)
        ids = torch.full((len(chunk), width), eos, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (_, p) in enumerate(chunk):
            ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
        torch.manual_seed(seed * 1_000_003 + start)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 pad_token_id=eos, eos_token_id=eos, **_sampling(temperature, min_p))
        for r, (i, _) in enumerate(chunk):
            new = gen[r, width:].tolist()
            out[i].append(tok.decode(new[:new.index(eos)] if eos in new else new))
    return out


def _sampling(temperature: float, min_p: float = 0.0) -> dict:
    """Temperature sampling with an optional min-p filter (no top-k/top-p), or greedy at 0."""
    if temperature <= 0:
        return dict(do_sample=False)
    return dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, **({"min_p": min_p} if min_p else {}))


def verifier_scores(model, tok, texts: list[str], batch: int = 128, log_odds: bool = False) -> list[float]:
    """P(yes) / (P(yes) + P(no)) after `<text>\\nCorrect?` for each full text (prompt + solution).

    log_odds=True returns logit(yes) - logit(no) instead: the same order, but no float saturation
    at 1.0, so confident candidates still rank (selection and AUROC use it).
    """
    import torch

    yes, no = (tok.encode(w).ids[0] for w in VERIFIER_WORDS)
    eos = tok.token_to_id("<|endoftext|>")
    scores = []
    for start in range(0, len(texts), batch):
        encoded = [tok.encode(t + VERIFIER_SUFFIX).ids for t in texts[start:start + batch]]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), eos, dtype=torch.long)
        for r, e in enumerate(encoded):
            ids[r, :len(e)] = torch.tensor(e)
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
        last = logits[torch.arange(len(encoded)), torch.tensor([len(e) - 1 for e in encoded])]
        margin = (last[:, yes] - last[:, no]).double()
        scores += (margin if log_odds else margin.sigmoid()).tolist()
    return scores


# --- metrics -----------------------------------------------------------------------------------

def by_level(problems, correct: list[bool]) -> dict:
    levels = {lv: [c for p, c in zip(problems, correct) if p.level == lv] for lv in arithmetic.LEVELS}
    return {"overall": _pct(correct), **{str(lv): _pct(c) for lv, c in levels.items()}}


def _pct(flags) -> float:
    flags = list(flags)
    return round(100 * sum(flags) / max(1, len(flags)), 1)


def majority(answers: list[int | None], weights: list[float] | None = None) -> int | None:
    """The most-voted parsed answer (ties: the first to reach the top count); None if none parsed."""
    votes: Counter = Counter()
    for i, a in enumerate(answers):
        if a is not None:
            votes[a] += weights[i] if weights else 1
    return max(votes, key=lambda a: (votes[a], -answers.index(a))) if votes else None


def fit_power_law(ks: list[int], coverage: list[float]) -> dict:
    """c(k) ~ exp(a * k^b), fitted by the calibration's regression, with its worst error on these points."""
    a, b = fit_coverage(ks, coverage)
    worst = max(abs(math.exp(a * k ** b) - c) for k, c in zip(ks, coverage))
    return {"a": round(a, 4), "b": round(b, 4), "max_abs_error": round(worst, 4)}


def auroc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random correct sample outscores a random wrong one (ties count half)."""
    return calibration_auroc([s for s, l in zip(scores, labels) if l], [s for s, l in zip(scores, labels) if not l])


def greedy(problems, model, tok) -> dict:
    texts = [g[0] for g in sample(model, tok, [p.prompt for p in problems], max_new_tokens=MAX_NEW_TOKENS)]
    correct = [arithmetic.check(t, p.answer) for t, p in zip(texts, problems)]
    return {"accuracy": by_level(problems, correct), "texts": texts, "correct": correct}


def blocks(n: int, k: int) -> list[slice]:
    """The disjoint k-sample blocks of n samples per problem. A k-sample method (majority@k,
    best-of-k) averaged over them estimates its accuracy on k fresh samples with less variance than
    the first k alone: one block of 16 moves a 200-problem figure by about +-1.5 points."""
    return [slice(s, s + k) for s in range(0, n - k + 1, k)]


def over_blocks(problems, n: int, k: int, correct_in_block) -> dict:
    """Accuracy by level of a k-sample method, averaged over the disjoint blocks:
    correct_in_block(i, block) says whether it solved problem i with that block's samples."""
    spans = blocks(n, k)
    return by_level(list(problems) * len(spans), [correct_in_block(i, s) for s in spans for i in range(len(problems))])


def scaling(problems, samples: list[list[str]], greedy_correct: list[bool]) -> dict:
    n = len(samples[0])
    answers = [[arithmetic.parse_answer(t) for t in group] for group in samples]
    hits = [[a == p.answer for a in group] for group, p in zip(answers, problems)]
    ks = list(range(1, n + 1))
    coverage = [sum(pass_at_k(n, sum(h), k) for h in hits) / len(hits) for k in ks]
    vote_k = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    majority_at = {k: over_blocks(problems, n, k, lambda i, s: majority(answers[i][s]) == problems[i].answer)
                   for k in vote_k}
    step_ok = [[arithmetic.check_steps(p.prompt + t).ok for t in group] for group, p in zip(samples, problems)]

    def step_vote(i: int, s: slice) -> bool:
        kept = [a if ok else None for a, ok in zip(answers[i][s], step_ok[i][s])]
        return (majority(kept) or majority(answers[i][s])) == problems[i].answer

    return {
        "samples_per_problem": n,
        "greedy": by_level(problems, greedy_correct),
        "mean_single_sample": by_level(problems, [])["overall"] if not hits else round(
            100 * sum(map(sum, hits)) / (n * len(hits)), 1),
        "majority_at_k": majority_at,
        "majority_at_16_first_block": by_level(problems, [majority(a[:16]) == p.answer for a, p in zip(answers, problems)]),
        "step_checked_vote_at_16": over_blocks(problems, n, 16, step_vote),
        "pass_at_k": {k: round(100 * c, 2) for k, c in zip(ks, coverage)},
        "pass_at_k_fit": fit_power_law(ks, coverage),
        "distinct_answers_at_16": round(sum(len(set(a[:16])) for a in answers) / len(answers), 2),
    }


def verification(problems, samples: list[list[str]], model, tok) -> dict:
    n = len(samples[0])
    texts = [p.prompt + t for group, p in zip(samples, problems) for t in group]
    labels = [arithmetic.check(t, p.answer) for group, p in zip(samples, problems) for t in group]
    scores = verifier_scores(model, tok, texts, log_odds=True)
    score = [scores[n * i:n * i + n] for i in range(len(problems))]
    answers = [[arithmetic.parse_answer(t) for t in group] for group in samples]

    def best(i: int, s: slice) -> bool:
        block = score[i][s]
        return answers[i][s][max(range(len(block)), key=block.__getitem__)] == problems[i].answer

    def weighted(i: int, s: slice) -> bool:
        return majority(answers[i][s], [1 / (1 + math.exp(-x)) for x in score[i][s]]) == problems[i].answer

    return {"auroc": round(auroc(scores, labels), 4), "samples": len(texts),
            "best_of_16": over_blocks(problems, n, 16, best), "weighted_vote_16": over_blocks(problems, n, 16, weighted)}


def teacher_forced(model, tok, problems, texts: list[str], draft=None) -> dict:
    """Top-1 agreement with the full model on its own greedy solutions, per exit layer K (and the draft)."""
    import torch

    n_layers = model.config.num_hidden_layers
    agree, total = Counter(), 0
    for p, t in zip(problems, texts):
        prompt_ids = tok.encode(p.prompt).ids
        ids = torch.tensor([prompt_ids + tok.encode(t).ids])
        keep = slice(len(prompt_ids) - 1, ids.shape[1] - 1)  # positions that predict solution tokens
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True)
            full = out.logits[0, keep].argmax(-1)
            for k in range(1, n_layers):
                exit_top = model.lm_head(model.model.norm(out.hidden_states[k]))[0, keep].argmax(-1)
                agree[k] += (exit_top == full).sum().item()
            if draft is not None:
                agree["draft"] += (draft(input_ids=ids).logits[0, keep].argmax(-1) == full).sum().item()
        total += full.numel()
    return {"positions": total, **{str(k): round(100 * v / total, 1) for k, v in agree.items()}}


def plot_pass_at_k(result: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cov = {int(k): v for k, v in result["pass_at_k"].items()}
    fit = result["pass_at_k_fit"]
    ks = sorted(cov)
    plt.figure(figsize=(5, 3.5))
    plt.plot(ks, [cov[k] for k in ks], "o", ms=3, label=f"pass@k (test, {_sampled(result)})")
    plt.plot(ks, [100 * math.exp(fit["a"] * k ** fit["b"]) for k in ks], "-",
             label=f"exp({fit['a']}*k^{fit['b']})")
    maj = {int(k): v["overall"] for k, v in result["majority_at_k"].items()}
    plt.plot(sorted(maj), [maj[k] for k in sorted(maj)], "s--", ms=3, label="majority@k")
    plt.xscale("log", base=2)
    plt.xlabel("k samples")
    plt.ylabel("% of test problems")
    plt.legend()
    plt.tight_layout()
    plt.savefig(out, dpi=120)


def run(samples_per_problem: int = 64, temperature: float = TEMPERATURE, threads: int = 1, min_p: float = MIN_P) -> dict:
    import torch

    torch.set_num_threads(threads)
    problems = list(arithmetic.split("test"))
    model, tok = load("generator")
    g, samples, timings = generator_outputs(problems, model, tok, samples_per_problem, temperature, min_p)
    result = {"split": "test", "problems": len(problems), "temperature": temperature, "min_p": min_p,
              **scaling(problems, samples, g["correct"])}
    result["greedy_texts_example"] = [p.prompt + t for p, t in zip(problems[::40], g["texts"][::40])]
    draft = _optional("draft")
    result["early_exit_agreement"] = teacher_forced(model, tok, problems, g["texts"], draft and draft[0])
    if draft:
        result["draft_greedy"] = greedy(problems, *draft)["accuracy"]
    verifier = _optional("verifier")
    if verifier:
        result["verifier"] = verification(problems, samples, *verifier)
    result["seconds"] = timings
    return result


def markdown(result: dict) -> str:
    """The model card's tables, from one evaluation result."""
    levels = ["overall", *map(str, arithmetic.LEVELS)]
    rows = [("greedy", result["greedy"]), (f"mean single sample ({_sampled(result)})", None)]
    rows += [(f"majority@{k}", v) for k, v in result["majority_at_k"].items()]
    rows += [("step-checked vote@16", result["step_checked_vote_at_16"])]
    if "verifier" in result:
        rows += [("verifier best-of-16", result["verifier"]["best_of_16"]),
                 ("verifier-weighted vote@16", result["verifier"]["weighted_vote_16"])]
    if "draft_greedy" in result:
        rows += [("draft model greedy", result["draft_greedy"])]
    lines = ["| test split (% correct) | " + " | ".join(levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for label, acc in rows:
        cells = [str(acc[lv]) for lv in levels] if acc else [str(result["mean_single_sample"])] + [""] * 5
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cov, fit = result["pass_at_k"], result["pass_at_k_fit"]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if str(k) in cov or k in cov]
    lines += ["", "| k | " + " | ".join(map(str, ks)) + " |", "|---" * (len(ks) + 1) + "|",
              "| pass@k (%) | " + " | ".join(str(cov.get(str(k), cov.get(k))) for k in ks) + " |",
              "", f"Fit c(k) = exp(a * k^b): a = {fit['a']}, b = {fit['b']} (max abs error {fit['max_abs_error']})."]
    agree = result["early_exit_agreement"]
    exits = [k for k in agree if k not in ("positions", "draft")]
    lines += ["", "| exit after layer K | " + " | ".join(exits) + (" | draft model |" if "draft" in agree else " |"),
              "|---" * (len(exits) + 1 + ("draft" in agree)) + "|",
              "| top-1 agreement with the full model (%) | " + " | ".join(str(agree[k]) for k in exits)
              + (f" | {agree['draft']} |" if "draft" in agree else " |")]
    if "verifier" in result:
        lines += ["", f"Verifier AUROC on {result['verifier']['samples']} generator samples: {result['verifier']['auroc']}."]
    return "\n".join(lines) + "\n"


def _sampled(result: dict) -> str:
    return f"T={result['temperature']}" + (f", min-p {result['min_p']}" if result.get("min_p") else "")


def generator_outputs(problems, model, tok, n: int, temperature: float, min_p: float = 0.0):
    """Greedy and sampled solutions, cached per generator weights (the slow part: reruns are cheap)."""
    from edgetts.embedded import cache_dir, path

    weights = (path("generator") / "model.safetensors").stat()
    drawn = f"n{n}-t{temperature}" + (f"-minp{min_p}" if min_p else "")
    cache = cache_dir() / "embedded" / f"eval-{weights.st_size}-{int(weights.st_mtime)}-{drawn}.json"
    if cache.is_file():
        return tuple(json.loads(cache.read_text()))
    timings, t0 = {}, time.time()
    g = greedy(problems, model, tok)
    timings["greedy"] = round(time.time() - t0, 1)
    t0 = time.time()
    samples = sample(model, tok, [p.prompt for p in problems], n=n, temperature=temperature, seed=7,
                     max_new_tokens=MAX_NEW_TOKENS, min_p=min_p)
    timings["sampling"] = round(time.time() - t0, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([g, samples, timings]))
    return g, samples, timings


def _optional(name: str):
    try:
        return load(name)
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgetts.embedded.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=TEMPERATURE)
    parser.add_argument("--min-p", type=float, default=MIN_P, help="min-p filter of the samples (0: off), as the controller's plans")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedded.json")
    parser.add_argument("--samples-only", action="store_true", help="only generate (and cache) the generator's outputs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.samples_only:
        import torch

        torch.set_num_threads(args.threads)
        generator_outputs(list(arithmetic.split("test")), *load("generator"), args.samples, args.temperature, args.min_p)
        return
    result = run(args.samples, args.temperature, args.threads, args.min_p)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot_pass_at_k(result, args.out.with_name(args.out.stem + "_passk.png"))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("pass_at_k", "greedy_texts_example")}, indent=2))


if __name__ == "__main__":
    main()

"""What a verifier needs to know to beat the vote on the embedded generator's samples.

Best-of-16 on the test split's 64 samples per problem (the samples `python -m
edgetts.embedded.evaluate` draws and caches; blocks of 16 as there) by selectors that know more
than the learned verifier: the programmatic checks in `edgetts.arithmetic` and the generator's
own likelihood of each sample. Beside them, majority@16 and the shipped verifier, and how well the
verifier and the likelihood rank one problem's samples (right above wrong, sound above misread).

    python benchmarks/bench_verifier_headroom.py      # ~3 min on 2 cores once the samples are cached

writes benchmarks/results/verifier_headroom.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgetts import arithmetic
from edgetts.calibration import auroc
from edgetts.embedded import evaluate as ev

OUT = Path(__file__).resolve().parent / "results" / "verifier_headroom.json"


def sample_logprobs(model, tok, prompt: str, completions: list[str]) -> list[float]:
    """Summed log-probability of each completion after `prompt`, teacher-forced in one batch."""
    import torch

    prompt_ids = tok.encode(prompt).ids
    rows = [tok.encode(c).ids for c in completions]
    ids = torch.zeros((len(rows), len(prompt_ids) + max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(prompt_ids) + len(row)] = torch.tensor(prompt_ids + row)
        mask[i, :len(prompt_ids) + len(row)] = 1
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    start = len(prompt_ids) - 1  # the position that predicts the completion's first token
    return [logp[i, start + torch.arange(len(row)), torch.tensor(row)].sum().item() for i, row in enumerate(rows)]


def within_problem_auroc(scores: list[list[float]], labels: list[list[bool]]) -> float:
    """P(a positive sample scores above a negative one of the same problem), ties half: each
    problem's AUROC, weighted by its number of (positive, negative) pairs."""
    wins = pairs = 0.0
    for group, flags in zip(scores, labels):
        pos = [s for s, f in zip(group, flags) if f]
        neg = [s for s, f in zip(group, flags) if not f]
        if pos and neg:
            wins += auroc(pos, neg) * len(pos) * len(neg)
            pairs += len(pos) * len(neg)
    return round(wins / pairs, 3)


def best(scores, among=None):
    """Picks the highest-scoring sample of a block, among those `among` allows (all if none)."""
    def pick(i: int, s: slice) -> int:
        idx = list(range(len(scores[i])))[s]
        allowed = [j for j in idx if among is None or among[i][j]] or idx
        return max(allowed, key=scores[i].__getitem__)
    return pick


def main(argv: list[str] | None = None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    problems = list(arithmetic.split("test"))
    generator, tok = ev.load("generator")
    _, samples, _ = ev.generator_outputs(problems, generator, tok, 64, ev.TEMPERATURE, ev.MIN_P)
    logprob = [sample_logprobs(generator, tok, p.prompt, group) for p, group in zip(problems, samples)]
    verifier, vtok = ev.load("verifier")
    flat = ev.verifier_scores(verifier, vtok, [p.prompt + t for p, g in zip(problems, samples) for t in g], log_odds=True)
    n = len(samples[0])
    verdict = [flat[i * n:(i + 1) * n] for i in range(len(problems))]
    right = [[arithmetic.check(t, p.answer) for t in g] for p, g in zip(problems, samples)]
    follows = [[arithmetic.follows_prompt(p.expression, t) for t in g] for p, g in zip(problems, samples)]
    legal = [[arithmetic.check_work(p.prompt, t) for t in g] for p, g in zip(problems, samples)]
    answers = [[arithmetic.parse_answer(t) for t in g] for g in samples]
    first = [list(range(n, 0, -1))] * len(problems)  # samples come in random order: the first is a coin

    pickers = {
        "verifier (shipped)": best(verdict),
        "generator log-probability": best(logprob),
        "coin among samples that follow the prompt": best(first, follows),
        "the most probable sample that follows the prompt": best(logprob, follows),
        "coin among samples on a legal path (follow the prompt, every step true)": best(first, legal),
    }
    selectors = {"majority@16": ev.over_blocks(problems, n, 16, lambda i, s: ev.majority(answers[i][s]) == problems[i].answer)}
    for name, pick in pickers.items():
        selectors[name] = ev.over_blocks(problems, n, 16, lambda i, s, pick=pick: right[i][pick(i, s)])
    result = {
        "split": "test", "problems": len(problems), "samples_per_problem": n, "block": 16,
        "best_of_16": selectors,
        "share_following_the_prompt": round(100 * sum(map(sum, follows)) / (n * len(problems)), 1),
        "right_among_those_following": round(100 * sum(r for rs, fs in zip(right, follows) for r, f in zip(rs, fs) if f)
                                             / sum(map(sum, follows)), 1),
        "within_problem_auroc": {
            "verifier, right vs wrong": within_problem_auroc(verdict, right),
            "verifier, follows vs not": within_problem_auroc(verdict, follows),
            "log-probability, right vs wrong": within_problem_auroc(logprob, right),
            "log-probability, follows vs not": within_problem_auroc(logprob, follows),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for name, by_level in selectors.items():
        print(f"{by_level['overall']:5.1f} %  {name}")
    print(json.dumps(result["within_problem_auroc"]), f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()

"""Calibration: how accurate each plan is for a task family, fitted from labelled samples.

`collect` draws, per labelled problem, one greedy answer and n samples (scored by every verifier);
`fit` turns those records into a `Calibration` (RESEARCH.md §1.0, §1.11):

- plan accuracy by Monte-Carlo N-subsets drawn without replacement from the stored samples, for
  every aggregation strategy and N, and for adaptive plans (waves + stopping rules) by replaying
  random orders of the samples — with the distribution of waves they used;
- the same per difficulty bin (terciles of the task's difficulty feature, else of prompt length),
  shrunk toward the overall figure;
- coverage pass@k (unbiased) and its fit c(k) = exp(a·k^b);
- verifier quality: TPR/FPR at 0.5, AUROC, and the accept threshold with FPR <= 5 %;
- answer lengths: a power law in the difficulty feature and the order statistics of N sample lengths
  (a batch lasts as long as its longest sample).

`prior()` is the calibration used before any exists: conservative, documented guesses.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetts.errors import ConfigError
from edgetts.strategies import NEEDS_SCORES, choose, should_stop

SCHEMA_VERSION = 1
# How plans draw their samples. Min-p 0.2 drops the unlikely tokens, which on the built-in model are
# mostly slips (a misread digit), and keeps the likely choices between valid solution paths, which
# voting needs: on the dev split, the retrained generator's majority@16 is 77.5 % with it, 76.0 %
# with min-p 0.1 and 73.5 % without. A calibration records what it was drawn with.
TEMPERATURE, MIN_P = 0.7, 0.2
N_GRID = (1, 2, 3, 4, 6, 8, 12, 16)
VOTES = ("majority", "weighted")
SELECTORS = ("best_of_n", "weighted_best_of_n", "best_of_majority")
WAVES = (1, 2, 4)
N_MAX_ADAPTIVE = (4, 8, 12, 16)
GAIN_PROOF_SE = 1.0  # standard errors a plan's gain over the plain vote must clear (see _discount_unproven_gains)
N_BINS = 3  # difficulty bins (quantiles of the calibration problems' difficulty)
# Finer bins for how many waves an adaptive plan draws, read between their centres: inside one of
# the three bins the built-in family's best-of-16 in waves of 4 goes from 1.0 waves to 2.8.
WAVE_BINS = 8
SHRINK = 20  # problems' worth of weight the overall accuracy gets in each difficulty bin


@dataclass
class Sample:
    answer: str | None
    correct: bool
    mean_logprob: float
    length: int  # decode steps: tokens, plus any a step repair took back
    scores: dict[str, float] = field(default_factory=dict)  # verifier name -> score
    text: str = ""  # kept so a new verifier can score stored samples (`rescore`)


@dataclass
class Record:
    prompt: str
    truth: str
    prompt_tokens: int
    greedy: Sample
    samples: list[Sample]
    difficulty: float | None = None  # the task's difficulty feature; None: prompt tokens stand in


def difficulty_of(record: Record) -> float:
    return record.prompt_tokens if record.difficulty is None else record.difficulty


@dataclass(frozen=True)
class PlanKey:
    """A calibrated way to answer: strategy, verifier, N (max samples) and wave size (N = one shot)."""

    strategy: str
    n: int
    wave: int
    verifier: str = ""

    @property
    def name(self) -> str:
        text = "greedy" if self.strategy == "greedy" else f"{self.strategy}@{self.n}"
        if self.verifier:
            text += f"+{self.verifier}"
        if self.wave < self.n:
            text += f"/wave{self.wave}"
        return text

    @property
    def waves_max(self) -> int:
        return -(-self.n // self.wave)

    @property
    def adaptive(self) -> bool:
        return self.wave < self.n

    def encode(self) -> str:
        return f"{self.strategy}|{self.n}|{self.wave}|{self.verifier}"

    @classmethod
    def decode(cls, text: str) -> PlanKey:
        strategy, n, wave, verifier = text.split("|")
        return cls(strategy, int(n), int(wave), verifier)


@dataclass
class PlanStats:
    accuracy: float
    by_bin: list[float]
    waves: list[float]  # waves[k] = P(at least k+1 waves are drawn); [1.0] for one-shot plans
    waves_by_bin: list[list[float]] = field(default_factory=list)  # the same per wave bin (see wave_centres)


@dataclass
class Calibration:
    task: str
    model: str
    source: str  # "fitted" or "prior"
    n_problems: int
    samples_per_problem: int
    temperature: float
    bin_edges: list[float]  # prompt-token thresholds between difficulty bins
    plans: dict[str, PlanStats]
    length_model: dict[str, float]  # mean steps = exp(log_scale) * difficulty^exponent (samples and greedy)
    order_stats: dict[str, list[float]]  # N -> E[sorted lengths / mean length], ascending
    coverage: dict[str, object] = field(default_factory=dict)
    verifiers: dict[str, dict[str, float]] = field(default_factory=dict)
    lengths: dict[str, float] = field(default_factory=dict)
    min_p: float = 0.0  # files written before min-p sampling drew without it
    repair: bool = False  # samples were drawn with step repair (their lengths count the rewound steps)
    # per difficulty bin: N -> E[sorted lengths / *predicted* mean length], and "greedy" -> [ratio]
    order_stats_by_bin: list[dict[str, list[float]]] = field(default_factory=list)
    # mean difficulty of each wave bin; files without it kept their wave curves per difficulty bin
    wave_centres: list[float] = field(default_factory=list)

    def sampling(self, seed: int | None = None):
        """Sampling parameters of the plans: the ones the calibration's samples were drawn with."""
        from edgetts.types import SamplingParams

        return SamplingParams(temperature=self.temperature, min_p=self.min_p, seed=seed)

    def stats(self, key: PlanKey) -> PlanStats | None:
        return self.plans.get(key.encode())

    def keys(self) -> list[PlanKey]:
        return [PlanKey.decode(k) for k in self.plans]

    def bin_of(self, difficulty: float) -> int:
        return sum(difficulty > edge for edge in self.bin_edges)

    def in_bin(self, per_bin: list, difficulty: float):
        """The entry of a per-bin list for this difficulty (the last one if the list is shorter)."""
        return per_bin[min(self.bin_of(difficulty), len(per_bin) - 1)]

    def accuracy(self, key: PlanKey, difficulty: float | None = None) -> float:
        """Expected accuracy of a plan, for a request of this difficulty (its bin) or overall."""
        stats = self.plans[key.encode()]
        if difficulty is None or not stats.by_bin:
            return stats.accuracy
        return self.in_bin(stats.by_bin, difficulty)

    def waves(self, key: PlanKey, difficulty: float | None = None) -> list[float]:
        """P(at least k+1 waves) for a plan at this difficulty: easy problems settle the vote early."""
        stats = self.plans[key.encode()]
        if difficulty is None or not stats.waves_by_bin:
            return stats.waves
        if len(self.wave_centres) != len(stats.waves_by_bin):
            return self.in_bin(stats.waves_by_bin, difficulty)
        return _between(self.wave_centres, stats.waves_by_bin, difficulty)

    def mean_length(self, difficulty: float, greedy: bool = False) -> float:
        """Predicted mean answer length (decode steps): a power law when fitted, else a straight line
        (priors, and files fitted before the power law)."""
        m = self.length_model
        which = "greedy" if greedy else "sample"
        if "sample_exponent" in m:
            return max(math.exp(m[f"{which}_log_scale"]) * max(difficulty, 0.5) ** m[f"{which}_exponent"], 1.0)
        return max(m[f"{which}_intercept"] + m[f"{which}_slope"] * difficulty, 1.0)

    def order(self, n: int, difficulty: float | None = None) -> list[float]:
        """E[sorted lengths of n samples] over the mean length predicted for them: in this
        difficulty's bin when fitted per bin (that also corrects the length model's bias there)."""
        table = self.order_stats
        if difficulty is not None and self.order_stats_by_bin:
            table = self.in_bin(self.order_stats_by_bin, difficulty)
        if str(n) in table:
            return table[str(n)]
        known = sorted(int(k) for k in table if k != "greedy")
        top = table[str(max(k for k in known if k <= n) if n >= known[0] else known[0])]
        return _resample(top, n)

    def greedy_ratio(self, difficulty: float | None = None) -> float:
        """Greedy's length over its predicted mean, in this difficulty's bin (1 when not fitted)."""
        if difficulty is None or not self.order_stats_by_bin:
            return 1.0
        return self.in_bin(self.order_stats_by_bin, difficulty)["greedy"][0]

    def save(self, path: str | Path) -> Path:
        from edgetts.export.atomic import write_text_atomic

        return write_text_atomic(path, json.dumps({"schema": SCHEMA_VERSION, **asdict(self)}, indent=1))


def _between(centres: list[float], curves: list[list[float]], x: float) -> list[float]:
    """The curve at x, read linearly between the two nearest centres (the end curves beyond them)."""
    if x <= centres[0] or len(centres) == 1:
        return curves[0]
    if x >= centres[-1]:
        return curves[-1]
    j = max(i for i, c in enumerate(centres) if c <= x)
    t = (x - centres[j]) / (centres[j + 1] - centres[j])
    width = max(len(curves[j]), len(curves[j + 1]))
    lo, hi = (c + [0.0] * (width - len(c)) for c in (curves[j], curves[j + 1]))
    return [a + t * (b - a) for a, b in zip(lo, hi)]


def _resample(values: list[float], n: int) -> list[float]:
    """Stretch an ascending order-statistics vector to n entries by linear interpolation."""
    if n == 1 or len(values) == 1:
        return [values[-1]] * n if n == 1 else [values[0]] * n
    out = []
    for i in range(n):
        x = i * (len(values) - 1) / (n - 1)
        lo = int(x)
        hi = min(lo + 1, len(values) - 1)
        out.append(values[lo] + (values[hi] - values[lo]) * (x - lo))
    return out


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no calibration at {path}; run `edgetts calibrate`")
    data = json.loads(path.read_text())
    if data.pop("schema", None) != SCHEMA_VERSION:
        raise ConfigError(f"{path} has an unsupported schema; re-run `edgetts calibrate`")
    try:
        data["plans"] = {k: PlanStats(**v) for k, v in data["plans"].items()}
        return Calibration(**data)
    except TypeError as exc:
        raise ConfigError(f"{path} is not a calibration this edgetts reads ({exc}); re-run `edgetts calibrate`") from exc


# --- fitting ----------------------------------------------------------------------------------

def plan_grid(verifiers: Sequence[str], n_max: int) -> list[PlanKey]:
    """Every plan calibration scores: one-shot votes and selectors, and adaptive variants."""
    sizes = [n for n in N_GRID if n <= n_max]
    keys = [PlanKey("greedy", 1, 1), PlanKey("single", 1, 1)]
    keys += [PlanKey(s, n, n) for s in VOTES for n in sizes if n > 1]
    keys += [PlanKey(s, n, n, v) for v in verifiers for s in SELECTORS for n in sizes if n > 1]
    adaptive = [n for n in N_MAX_ADAPTIVE if n <= n_max]
    keys += [PlanKey("majority", n, w) for n in adaptive for w in WAVES if w < n]
    keys += [PlanKey(s, n, w, v) for v in verifiers for s in ("best_of_n", "best_of_majority")
             for n in adaptive for w in WAVES if w < n]
    return keys


def _plan_outcome(key: PlanKey, order: list[Sample], accept: dict[str, float]) -> tuple[bool, int]:
    """Replay a plan on samples in `order`: (correct, waves drawn)."""
    drawn: list[Sample] = []
    waves = 0
    while len(drawn) < key.n:
        drawn += order[len(drawn):len(drawn) + key.wave]
        waves += 1
        answers = [s.answer for s in drawn]
        scores = [s.scores.get(key.verifier, 0.0) for s in drawn] if key.verifier else None
        if should_stop(answers, key.n - len(drawn), scores=scores, accept=accept.get(key.verifier)):
            break
    answers = [s.answer for s in drawn]
    scores = [s.scores[key.verifier] for s in drawn] if key.strategy in NEEDS_SCORES else None
    choice = choose(key.strategy, answers, [s.mean_logprob for s in drawn], scores)
    correct = choice.index >= 0 and drawn[choice.index].correct
    return correct, waves


def _problem_scores(keys: list[PlanKey], record: Record, draws: int, rng: random.Random,
                    accept: dict[str, float]) -> dict[PlanKey, tuple[float, list[int]]]:
    """Expected correctness of every plan on one problem, and the waves each replay used.

    All plans replay the same random orders of the samples (common random numbers), so plan
    differences are not drowned in subset noise; N-subsets are the orders' first N samples.
    """
    orders = [rng.sample(record.samples, len(record.samples)) for _ in range(draws)]
    out = {}
    for key in keys:
        if key.strategy == "greedy":
            out[key] = (float(record.greedy.correct), [1])
            continue
        if key.n > len(record.samples):
            raise ConfigError(f"plan {key.name} needs {key.n} samples per problem; calibrate with n >= {key.n}")
        exhaustive = key.n == len(record.samples) and not key.adaptive
        results = [_plan_outcome(key, order[:key.n], accept) for order in (orders[:1] if exhaustive else orders)]
        out[key] = (sum(ok for ok, _ in results) / len(results), [waves for _, waves in results])
    return out


def fit(records: Sequence[Record], *, task: str, model: str, temperature: float, verifiers: Sequence[str] = (),
        draws: int = 64, seed: int = 0, n_bins: int = N_BINS, max_tokens: int | None = None,
        progress: Callable[[int, int], None] | None = None, min_p: float = 0.0, repair: bool = False) -> Calibration:
    """Fit a `Calibration` from collected records (see `collect`); `max_tokens`, `min_p`, `repair`: how
    they were drawn."""
    if not records:
        raise ConfigError("calibration needs at least one labelled problem")
    n = min(len(r.samples) for r in records)
    rng = random.Random(seed)
    verifier_stats = {v: verifier_quality(records, v) for v in verifiers}
    accept = {v: s["accept_threshold"] for v, s in verifier_stats.items()}
    edges = _bin_edges([difficulty_of(r) for r in records], n_bins)
    bins = [sum(difficulty_of(r) > e for e in edges) for r in records]
    grid = plan_grid(list(verifiers), n)
    per_problem = []
    for i, record in enumerate(records):
        per_problem.append(_problem_scores(grid, record, draws, rng, accept))
        if progress:
            progress(i + 1, len(records))
    difficulties = [difficulty_of(r) for r in records]
    wave_edges = _bin_edges(difficulties, WAVE_BINS)
    wave_bins = [sum(d > e for e in wave_edges) for d in difficulties]
    centres = [statistics.fmean(d for d, b in zip(difficulties, wave_bins) if b == k) for k in range(len(wave_edges) + 1)]
    plans = {key.encode(): _summarise(key, [p[key] for p in per_problem], bins, len(edges) + 1, wave_bins, len(centres))
             for key in grid}
    _discount_unproven_gains(plans, per_problem, grid)
    sizes = [k for k in N_GRID if k <= n]
    calibration = Calibration(
        task=task, model=model, source="fitted", n_problems=len(records), samples_per_problem=n,
        temperature=temperature, bin_edges=edges, plans=plans, length_model=length_model(records),
        order_stats=order_statistics(records, sizes, rng),
        coverage=coverage(records), verifiers=verifier_stats,
        lengths={**length_summary(records), **({"cap": float(max_tokens)} if max_tokens else {})}, min_p=min_p,
        repair=repair, wave_centres=[round(c, 3) for c in centres],
    )
    calibration.order_stats_by_bin = order_statistics_by_bin(records, bins, len(edges) + 1, sizes, calibration, rng)
    return calibration


def _summarise(key: PlanKey, per_problem: list[tuple[float, list[int]]], bins: list[int], n_bins: int,
               wave_bins: list[int], n_wave_bins: int) -> PlanStats:
    overall = statistics.fmean(score for score, _ in per_problem)
    by_bin = []
    for b in range(n_bins):
        in_bin = [p for p, pb in zip(per_problem, bins) if pb == b]
        by_bin.append((sum(score for score, _ in in_bin) + SHRINK * overall) / (len(in_bin) + SHRINK))
    waves_by_bin = [_wave_curve([w for (_, waves), wb in zip(per_problem, wave_bins) if wb == b for w in waves])
                    for b in range(n_wave_bins)]
    return PlanStats(round(overall, 5), [round(x, 5) for x in by_bin],
                     _wave_curve([w for _, waves in per_problem for w in waves]), waves_by_bin)


def _wave_curve(used: list[int]) -> list[float]:
    """waves[k] = share of replays that drew at least k+1 waves."""
    if not used:
        return [1.0]
    return [round(sum(u > k for u in used) / len(used), 5) for k in range(max(used))]


def _discount_unproven_gains(plans: dict[str, PlanStats], per_problem: list[dict], grid: list[PlanKey]) -> None:
    """Shrink each plan's gain over the plain vote of its N by one standard error of that gain.

    The controller takes the best of ~100 plans, each scored on the same few hundred problems; the
    winner of such a contest is partly the luckiest (on the built-in family, the verifier plans it
    chose at 30x, rated a point above majority@16 on the dev split, scored 4.5 below it on test). A
    verifier or a weighted vote has to beat the vote it refines by more than noise before it is
    preferred; the gain is measured paired, problem by problem, so the noise is the difference's.
    """
    for key in grid:
        reference = PlanKey("majority", key.n, key.n)
        if key.strategy == "majority" or key.n == 1 or reference not in per_problem[0]:
            continue
        diffs = [p[key][0] - p[reference][0] for p in per_problem]
        gain = statistics.fmean(diffs)
        if gain <= 0:
            continue
        error = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else gain
        keep = max(0.0, gain - GAIN_PROOF_SE * error) / gain
        stats, vote = plans[key.encode()], plans[reference.encode()]
        stats.accuracy = round(vote.accuracy + keep * (stats.accuracy - vote.accuracy), 5)
        stats.by_bin = [round(v + keep * (s - v), 5) if s > v else s for s, v in zip(stats.by_bin, vote.by_bin)]


def _bin_edges(values: list[int], n_bins: int) -> list[float]:
    if n_bins <= 1 or len(set(values)) < n_bins:
        return []
    ordered = sorted(values)
    return sorted({ordered[len(ordered) * k // n_bins] for k in range(1, n_bins)})


# --- pieces that stand on their own --------------------------------------------------------------

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k with c of n correct: 1 - C(n-c, k)/C(n, k), in its stable product form."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def fit_coverage(ks: Sequence[int], cov: Sequence[float]) -> tuple[float, float]:
    """Fit c(k) = exp(a·k^b) by regressing ln(-ln c) on ln k; a = ln pass@1 when the fit is exact."""
    points = [(math.log(k), math.log(-math.log(c))) for k, c in zip(ks, cov) if 0 < c < 1]
    if len(points) < 2:
        c1 = min(max(cov[0], 1e-9), 1 - 1e-9)
        return math.log(c1), 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    var = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0
    return -math.exp(my - b * mx), b


def coverage(records: Sequence[Record]) -> dict[str, object]:
    n = min(len(r.samples) for r in records)
    ks = [k for k in range(1, n + 1)]
    cov = [statistics.fmean(pass_at_k(n, sum(s.correct for s in r.samples[:n]), k) for r in records) for k in ks]
    fit_ks = [k for k in ks if k == 1 or (k & (k - 1) == 0 and k <= max(n // 2, 1))]
    a, b = fit_coverage(fit_ks, [cov[k - 1] for k in fit_ks])
    return {"k": ks, "pass_at_k": [round(c, 5) for c in cov], "a": round(a, 5), "b": round(b, 5)}


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a random correct sample > score of a random wrong one), ties count half."""
    if not positives or not negatives:
        return float("nan")
    ordered = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tie group
        rank_sum += mid * sum(label for _, label in ordered[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def verifier_quality(records: Sequence[Record], name: str, max_fpr: float = 0.05) -> dict[str, float]:
    pos = [s.scores[name] for r in records for s in r.samples if s.correct and name in s.scores]
    neg = [s.scores[name] for r in records for s in r.samples if not s.correct and name in s.scores]
    tpr = sum(x >= 0.5 for x in pos) / max(len(pos), 1)
    fpr = sum(x >= 0.5 for x in neg) / max(len(neg), 1)
    return {"tpr": round(tpr, 4), "fpr": round(fpr, 4), "auroc": round(auroc(pos, neg), 4),
            "accept_threshold": accept_threshold(neg, max_fpr), "n_correct": len(pos), "n_wrong": len(neg)}


def accept_threshold(negatives: Sequence[float], max_fpr: float) -> float:
    """The lowest score threshold whose false-positive rate is at most `max_fpr` (above 1: never accept)."""
    candidates = sorted(set(negatives) | {1.0})
    for t in candidates:
        if sum(x >= t for x in negatives) / max(len(negatives), 1) <= max_fpr:
            return t
    return 1.01


def length_model(records: Sequence[Record]) -> dict[str, float]:
    """Mean length = scale * difficulty^exponent, fitted on logs: on the built-in family's dev split
    this predicts a problem's mean sample length within 13 % (median) where a straight line gave
    19 %, and a straight line predicted 7 steps for `9+5` (13 real ones)."""
    xs = [math.log(max(difficulty_of(r), 0.5)) for r in records]
    out = {}
    for which, ys in (("sample", [statistics.fmean(s.length for s in r.samples) for r in records]),
                      ("greedy", [r.greedy.length for r in records])):
        logs = [math.log(max(y, 1.0)) for y in ys]
        mx, my = statistics.fmean(xs), statistics.fmean(logs)
        var = sum((x - mx) ** 2 for x in xs)
        exponent = sum((x - mx) * (y - my) for x, y in zip(xs, logs)) / var if var else 0.0
        out[f"{which}_log_scale"], out[f"{which}_exponent"] = round(my - exponent * mx, 5), round(exponent, 5)
    return out


def order_statistics(records: Sequence[Record], sizes: Sequence[int], rng: random.Random,
                     draws: int = 32, reference: Callable[[Record], float] | None = None) -> dict[str, list[float]]:
    """For each N: E[sorted lengths of N samples / reference length] (default: the problem's mean)."""
    reference = reference or (lambda r: statistics.fmean(s.length for s in r.samples) or 1.0)
    out = {}
    for n in sizes:
        sums = [0.0] * n
        count = 0
        for r in records:
            mean = reference(r)
            for _ in range(draws):
                for j, length in enumerate(sorted(s.length for s in rng.sample(r.samples, n))):
                    sums[j] += length / mean
                count += 1
        out[str(n)] = [round(x / count, 4) for x in sums]
    return out


def order_statistics_by_bin(records: Sequence[Record], bins: list[int], n_bins: int, sizes: Sequence[int],
                            calibration: Calibration, rng: random.Random) -> list[dict[str, list[float]]]:
    """Order statistics per difficulty bin, over the length the model predicts (not the problem's own
    mean): a batch's expected length then carries the bin's spread and the length model's bias there.
    On the built-in family with step repair, the longest of 8 runs 1.20x the predicted mean on easy
    problems, 1.29x in the middle bin and 1.43x on hard ones (1.26x in one table for all), and the
    power law falls 10 % short of the hard bin's lengths."""
    out = []
    for b in range(n_bins):
        in_bin = [r for r, rb in zip(records, bins) if rb == b] or list(records)
        table = order_statistics(in_bin, sizes, rng, draws=8,
                                 reference=lambda r: calibration.mean_length(difficulty_of(r)))
        greedy = [r.greedy.length / calibration.mean_length(difficulty_of(r), greedy=True) for r in in_bin]
        out.append({**table, "greedy": [round(statistics.fmean(greedy), 4)]})
    return out


def length_summary(records: Sequence[Record]) -> dict[str, float]:
    lengths = sorted(s.length for r in records for s in r.samples)

    def q(p: float) -> float:
        return float(lengths[min(int(p * len(lengths)), len(lengths) - 1)])
    return {"mean": round(statistics.fmean(lengths), 2), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
            "max": float(lengths[-1])}


# --- priors -----------------------------------------------------------------------------------

def prior(model: str = "", verifiers: Sequence[str] = (), n_max: int = 16) -> Calibration:
    """A calibration to plan with before `edgetts calibrate` has run: deliberately modest gains.

    Greedy 50 %; a single sample 45 %; voting climbs toward +10 points as 1 - N^-1/2;
    a verifier adds up to +15 points more; adaptive plans keep the one-shot accuracy and are
    assumed to stop after half their waves. Lengths: 40 tokens, no dependence on the prompt.
    """
    plans = {}
    for key in plan_grid(list(verifiers), n_max):
        gain = 0.0 if key.n == 1 else 0.10 * (1 - key.n ** -0.5)
        if key.verifier:
            gain += 0.15 * (1 - key.n ** -0.5)
        base = 0.5 if key.strategy == "greedy" else 0.45 if key.n == 1 else 0.5
        waves = [1.0] + [0.5] * (key.waves_max - 1)
        plans[key.encode()] = PlanStats(round(base + gain, 4), [], waves)
    return Calibration(
        task="prior", model=model, source="prior", n_problems=0, samples_per_problem=n_max, temperature=TEMPERATURE,
        min_p=MIN_P, bin_edges=[], plans=plans,
        length_model={"sample_intercept": 40.0, "sample_slope": 0.0, "greedy_intercept": 40.0, "greedy_slope": 0.0},
        order_stats={str(n): [round(0.8 + 0.4 * j / max(n - 1, 1), 4) for j in range(n)] for n in N_GRID},
    )


# --- collecting samples -----------------------------------------------------------------------

def collect(engine, problems: Sequence[tuple[str, str]], *, n: int, temperature: float, max_tokens: int,
            is_correct: Callable[[str | None, str], bool], verifiers: dict | None = None,
            extract=None, seed: int = 0, difficulty: Callable[[str], float] | None = None,
            progress: Callable[[int, int], None] | None = None, min_p: float = 0.0,
            repair=None) -> list[Record]:
    """For each (prompt, truth): one greedy answer and n samples, scored by every verifier.

    `difficulty(prompt)`: a task feature that predicts answer length (default: prompt tokens).
    `repair`: the step checker the samples are drawn with (see `sample_n`); greedy is drawn plain.
    """
    from edgetts.generate import prompt_tokens, sample_n
    from edgetts.strategies import extract_answer
    from edgetts.types import SamplingParams

    extract = extract or extract_answer
    verifiers = verifiers or {}
    chunk = max(engine.info.n_seq_max, 1)
    records = []
    for i, (prompt, truth) in enumerate(problems):
        ids = prompt_tokens(engine.tokenizer, prompt)
        greedy = sample_n(engine, ids, 1, SamplingParams(temperature=0.0), max_tokens)[0]
        drawn = []
        for begin in range(0, n, chunk):
            params = SamplingParams(temperature=temperature, min_p=min_p, seed=seed * 1_000_003 + i * 1009 + begin)
            drawn += sample_n(engine, ids, min(chunk, n - begin), params, max_tokens, repair=repair)
        scores = {name: v.score(prompt, [c.text for c in drawn]) for name, v in verifiers.items()}
        samples = [_sample(c, extract, is_correct, truth, {k: s[j] for k, s in scores.items()})
                   for j, c in enumerate(drawn)]
        records.append(Record(prompt, truth, len(ids), _sample(greedy, extract, is_correct, truth, {}), samples,
                              difficulty(prompt) if difficulty else None))
        if progress:
            progress(i + 1, len(problems))
    return records


def _sample(completion, extract, is_correct, truth, scores) -> Sample:
    answer = extract(completion.text)
    return Sample(answer, bool(is_correct(answer, truth)), completion.mean_logprob, completion.decode_steps, scores,
                  completion.text)


def rescore(records: Sequence[Record], verifiers: dict, progress: Callable[[int, int], None] | None = None) -> None:
    """Score stored samples with (new) verifiers in place, so a calibration can add a verifier without
    drawing the samples again."""
    for i, record in enumerate(records):
        for name, verifier in verifiers.items():
            for sample, score in zip(record.samples, verifier.score(record.prompt, [s.text for s in record.samples])):
                sample.scores[name] = score
        if progress:
            progress(i + 1, len(records))


def refresh_free_scores(records: Sequence[Record], verifiers: dict) -> None:
    """Re-score stored samples with every programmatic checker (free, and it may have changed since
    they were drawn), then every product of verifiers from its parts' stored scores."""
    rescore(records, {k: v for k, v in verifiers.items() if not getattr(v, "generative", True)})
    name_of = {id(v): k for k, v in verifiers.items()}
    for name, verifier in verifiers.items():
        parts = [name_of.get(id(part)) for part in getattr(verifier, "parts", ())]
        if parts and None not in parts:
            for sample in (s for r in records for s in r.samples):
                sample.scores[name] = math.prod(sample.scores[k] for k in parts)


def save_records(records: Sequence[Record], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    return path


def load_records(path: str | Path) -> list[Record]:
    out = []
    for line in Path(path).read_text().splitlines():
        data = json.loads(line)
        data["greedy"] = Sample(**data["greedy"])
        data["samples"] = [Sample(**s) for s in data["samples"]]
        out.append(Record(**data))
    return out


"""What `edgetts.solve`, `edgetts run --budget`, `profile`, `calibrate` and `bench` share: open a model
(the embedded family by default) with its verifiers, and find or measure its profile and calibration.

Files live in the cache directory (`edgetts.profile.cache_dir()`), keyed by model, runtime and device:

    profiles/<key>.toml               the device profile (measured on first use)
    profiles/<key>.calibration.json   the calibration (`edgetts calibrate`), else the shipped one, else priors
    decisions.jsonl                   one line per controller decision
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from edgetts.calibration import MIN_P, TEMPERATURE, Calibration, load_calibration, prior
from edgetts.controller import Controller
from edgetts.profile import DeviceProfile, load_profile, measure_profile, profile_path, save_profile
from edgetts.verifiers import CheckerVerifier, GenerativeVerifier, ProductVerifier

N_SEQ_MAX = 17  # 16 samples + the prompt they fork from
# Engine threads for the embedded models. llama.cpp runs batched decodes (N samples, prefill) on the
# cores other processes leave free (edgetts.runtimes.cores): with one core taken, 2 threads stalled a
# batch-16 step to 126 ms at p99 against 3.8 ms with 1, while on the quiet 2-core VM 2 threads are
# 1.7x faster at batch 8-16. One-token steps stay on one thread: a 0.2 ms step is mostly the pool's
# synchronisation, and when the VM's host was busy 2 threads made greedy slower (11.6 vs 10.2 ms).
# ONNX Runtime's pool has no such watch, so it keeps one thread.
EMBEDDED_THREADS = {"gguf": {"single_token_threads": 1}, "onnx": {"n_threads": 1}}
EMBEDDED = "embedded"
SHIPPED_CALIBRATION = "embedded.calibration.json"  # in edgetts.profiles, fitted on the calibration split


@dataclass
class Family:
    """A generator engine and the verifiers that can score its answers."""

    name: str  # "embedded" or the model path's name
    engine: object
    verifiers: dict = field(default_factory=dict)
    load_seconds: float = 0.0
    weights_stamp: str = ""  # identifies the weights a calibration was fitted on
    drafter: object = None  # for speculative greedy decoding, when the profile shows it pays
    difficulty: object = None  # prompt -> a feature that predicts answer length (None: prompt tokens)
    repair: object = None  # partial text -> offset of its first wrong step (sampling rewinds there)

    @property
    def key(self) -> str:
        info = self.engine.info
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.name}-{info.runtime}-{info.device}")


def open_family(model: str | Path | None = None, runtime: str | None = None, verifier: str | Path | None = None,
                n_seq_max: int = N_SEQ_MAX) -> Family:
    """The embedded family (generator + step checker + generative verifier), or a model of yours."""
    if model is None:
        return _embedded(runtime, n_seq_max)
    from edgetts.runtimes import load

    start = time.perf_counter()
    engine = load(model, runtime=runtime, n_seq_max=n_seq_max)
    verifiers = {}
    if verifier is not None:
        verifiers["verifier"] = GenerativeVerifier(load(verifier, runtime=runtime, n_seq_max=n_seq_max))
    return Family(Path(model).name, engine, verifiers, time.perf_counter() - start, _stamp(Path(model)))


def _embedded(runtime: str | None, n_seq_max: int) -> Family:
    from edgetts import arithmetic, embedded
    from edgetts.runtimes import load

    fmt = "onnx" if runtime == "onnxruntime" else "gguf"
    start = time.perf_counter()
    engine = load(embedded.artifact("generator", fmt), runtime=runtime, n_seq_max=n_seq_max,
                  **EMBEDDED_THREADS[fmt])
    load_seconds = time.perf_counter() - start
    verifiers = {"steps": CheckerVerifier(arithmetic.check_work, name="steps")}
    judge = _optional_builtin("verifier", fmt, runtime, n_seq_max)
    if judge is not None:
        yes, no = embedded.VERIFIER_WORDS
        verifiers["verifier"] = GenerativeVerifier(judge, prefix="{prompt}", yes=yes, no=no, name="verifier",
                                                   suffix="{candidate}" + embedded.VERIFIER_SUFFIX)
        verifiers["both"] = ProductVerifier(verifiers["steps"], verifiers["verifier"], name="both")
    return Family(EMBEDDED, engine, verifiers, load_seconds, _stamp(embedded.path("generator")),
                  _embedded_drafter(fmt, runtime), arithmetic_difficulty, arithmetic.first_wrong_step)


def arithmetic_difficulty(prompt: str) -> float:
    """How long a worked arithmetic answer runs (characters): `arithmetic.worked_length` for a prompt
    in the task's format, else a count of operations (a product twice) and digits, scaled by the
    two's median ratio on the dev split (10.5)."""
    from edgetts import arithmetic

    expression = arithmetic.expression_of(prompt)
    if expression:
        try:
            return arithmetic.worked_length(expression)
        except ValueError:
            pass
    operations = len(re.findall(r"[-+*]", prompt))
    return 10.5 * (operations + prompt.count("*") + len(re.findall(r"\d", prompt)) / 4)


def _embedded_drafter(fmt: str, runtime: str | None):
    from edgetts.drafters import ModelDrafter

    engine = _optional_builtin("draft", fmt, runtime, 1)
    return ModelDrafter(engine, name="draft") if engine is not None else None


def _optional_builtin(name: str, fmt: str, runtime: str | None, n_seq_max: int):
    """A built-in model's engine, or None when this installation lacks its weights (plans then skip it)."""
    from edgetts import embedded
    from edgetts.errors import ModelNotFoundError
    from edgetts.runtimes import load

    try:
        return load(embedded.artifact(name, fmt), runtime=runtime, n_seq_max=n_seq_max, **EMBEDDED_THREADS[fmt])
    except ModelNotFoundError:
        return None


def _stamp(folder: Path) -> str:
    weights = folder / "model.safetensors"
    return f"{weights.stat().st_size}" if weights.is_file() else folder.name


# --- profile and calibration ----------------------------------------------------------------------

def ensure_profile(family: Family, remeasure: bool = False, progress: bool = False,
                   path: str | Path | None = None) -> tuple[DeviceProfile, Path]:
    """The saved profile for this family on this device, measured (and saved) when missing."""
    path = Path(path) if path else profile_path(family.key)
    if path.is_file() and not remeasure:
        profile = load_profile(path)
        if profile.model == profiled_model(family):  # timings of other weights (an upgrade) do not apply
            return profile, path
    profile = measure(family, progress=progress)
    return profile, save_profile(profile, path)


def profiled_model(family: Family) -> str:
    """What a profile records as its model: the family and the weights it timed."""
    return f"{family.name}@{family.weights_stamp}" if family.weights_stamp else family.name


def measure(family: Family, progress: bool = False) -> DeviceProfile:
    generative = next((v for v in family.verifiers.values() if isinstance(v, GenerativeVerifier)), None)
    draft = (lambda: draft_probe(family.engine, family.drafter)) if family.drafter is not None else None
    return measure_profile(family.engine, name=f"{family.key} on this device", model=profiled_model(family),
                           verifier=generative, draft=draft, load_seconds=family.load_seconds, progress=progress)


PROBE_PROMPTS = ("What is 37*48+15?", "What is (120-7)*3-45?", "What is 64+17*3?")


def draft_probe(engine, drafter, prompts=PROBE_PROMPTS, max_tokens: int = 64) -> tuple[float, float]:
    """(acceptance rate, speedup of speculative over plain greedy decoding) on a few prompts."""
    from edgetts.generate import generate

    plain = spec = 0.0
    drafted = accepted = 0
    for prompt in prompts:
        start = time.perf_counter()
        generate(engine, prompt, max_tokens=max_tokens)
        plain += time.perf_counter() - start
        start = time.perf_counter()
        stats = generate(engine, prompt, max_tokens=max_tokens, drafter=drafter).stats
        spec += time.perf_counter() - start
        drafted, accepted = drafted + (stats.get("drafted") or 0), accepted + (stats.get("accepted") or 0)
    return (accepted / drafted if drafted else 0.0), plain / spec


def calibration_path(family: Family) -> Path:
    return profile_path(family.key).with_suffix(".calibration.json")


def find_calibration(family: Family) -> Calibration:
    """This device's own calibration, else the one shipped for the embedded family, else priors."""
    own = calibration_path(family)
    if own.is_file():
        return load_calibration(own)
    if family.name == EMBEDDED:
        shipped = _shipped_calibration()
        if shipped is not None and shipped.model == family.weights_stamp:
            return shipped
    return prior(model=family.weights_stamp, verifiers=list(family.verifiers))


def _shipped_calibration() -> Calibration | None:
    from importlib.resources import files

    entry = files("edgetts.profiles") / SHIPPED_CALIBRATION
    return load_calibration(Path(str(entry))) if entry.is_file() else None


def controller_for(family: Family, progress: bool = False, **options) -> Controller:
    profile, path = ensure_profile(family, progress=progress)
    return Controller(family.engine, profile, find_calibration(family), family.verifiers,
                      drafter=family.drafter, profile_path=path, difficulty=family.difficulty, repair=family.repair,
                      **options)


@lru_cache(maxsize=4)
def _cached_controller(model: str | None, runtime: str | None) -> Controller:
    controller = controller_for(open_family(model, runtime), progress=True)
    controller.warm_up()  # before the first request's clock starts
    return controller


def solve(prompt: str, budget: float = 2.0, model: str | Path | None = None, max_tokens: int | None = None,
          runtime: str | None = None, seed: int | None = None) -> dict:
    """Answer `prompt` as accurately as possible within `budget` seconds.

    With no `model`, the embedded arithmetic family is used (profiled on first use, with a progress
    bar). Returns a dict with `answer`, `text`, `plan`, `explanation`, `predicted_latency_s` and
    `latency_s`. The loaded engines stay cached in the process, so later calls pay no load time.
    `seed` makes the samples reproducible (the plan itself follows the measured latency).
    """
    controller = _cached_controller(str(model) if model is not None else None, runtime)
    return controller.solve(prompt, budget, max_tokens=max_tokens, seed=seed).to_dict()


# --- calibrate ------------------------------------------------------------------------------------

def labelled_problems(data: str | Path | None = None, split: str = "dev", limit: int | None = None
                      ) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: from a JSONL file of {"prompt", "answer"}, or the embedded task's split.

    `limit` keeps that many, spread evenly over the split (the embedded splits are ordered by level).
    """
    if data is not None:
        pairs = _read_jsonl(Path(data))
    else:
        from edgetts import arithmetic

        pairs = [(p.prompt, str(p.answer)) for p in arithmetic.split(split)]
    if limit and limit < len(pairs):
        step = len(pairs) / limit
        pairs = [pairs[int(i * step)] for i in range(limit)]
    return pairs


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    import json

    from edgetts.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"no labelled data at {path}; pass a JSONL file with one {{\"prompt\", \"answer\"}} per line")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" not in row or "answer" not in row:
            raise ConfigError(f"{path}:{number}: each line needs \"prompt\" and \"answer\" fields, got {sorted(row)}")
        pairs.append((str(row["prompt"]), str(row["answer"]).strip()))
    return pairs


def same_answer(extracted: str | None, truth: str) -> bool:
    """Exact match after the extractor's normalisation (commas dropped, integers compared as numbers)."""
    if extracted is None:
        return False
    try:
        return float(extracted) == float(truth.replace(",", ""))
    except ValueError:
        return extracted.strip() == truth.strip()


def calibrate(family: Family, problems: list[tuple[str, str]], n: int = 32, temperature: float = TEMPERATURE,
              max_tokens: int = 160, draws: int = 64, progress=None, out: str | Path | None = None,
              reuse_samples: bool = False, min_p: float = MIN_P):
    """Collect samples on labelled problems, fit the calibration and save it beside the profile.

    Returns (calibration, path). The raw samples are kept too (`.samples.jsonl`); with
    `reuse_samples`, they are loaded instead of drawn again: model verifiers they lack score them,
    and programmatic checkers (free) score them all again.
    """
    from edgetts.calibration import fit, load_records, refresh_free_scores, rescore, save_records

    path = Path(out) if out else calibration_path(family)
    samples_path = path.with_suffix("").with_suffix(".samples.jsonl")
    step = (lambda label: (lambda i, total: progress(label, i, total))) if progress else (lambda label: None)
    if reuse_samples and samples_path.is_file():
        records = load_records(samples_path)
        for record in records:  # the family's difficulty feature may have changed since they were drawn
            record.difficulty = family.difficulty(record.prompt) if family.difficulty else None
        missing = {k: v for k, v in family.verifiers.items() if k not in records[0].samples[0].scores}
        rescore(records, missing, progress=step("scoring"))
        refresh_free_scores(records, family.verifiers)
    else:
        records = _collect(family, problems, n, temperature, min_p, max_tokens, step("sampling"))
    save_records(records, samples_path)
    calibration = fit(records, task=family.name, model=family.weights_stamp, temperature=temperature, min_p=min_p,
                      repair=family.repair is not None, verifiers=list(family.verifiers), draws=draws,
                      max_tokens=max_tokens,
                      progress=step("fitting plans"))
    return calibration, calibration.save(path)


def _collect(family: Family, problems, n, temperature, min_p, max_tokens, progress):
    from edgetts.calibration import collect

    return collect(family.engine, problems, n=n, temperature=temperature, min_p=min_p, max_tokens=max_tokens,
                   is_correct=same_answer, verifiers=family.verifiers, difficulty=family.difficulty,
                   progress=progress, repair=family.repair)


# --- edgetts run --budget -----------------------------------------------------------------------------

def solve_cli(prompt: str, budget: float, model: str | None, runtime: str | None, n: int, draft: str | None,
              max_tokens: int | None, seed: int | None = None) -> dict:
    """`edgetts run --budget`: the controller decides N, verifier and drafter, so --n/--draft conflict."""
    from edgetts.errors import ConfigError

    if n != 1 or draft:
        raise ConfigError("--budget plans the number of samples and the drafter itself; drop --n/--draft, "
                          "or drop --budget to choose them by hand")
    return solve(prompt, budget, model, max_tokens=max_tokens, runtime=runtime, seed=seed)


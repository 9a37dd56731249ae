"""The device profile: what one model costs on this device, measured, saved as TOML, kept fresh.

    [profile]   schema, name, source ("measured" | "estimate"), model, runtime, device, host, measured_at, note
    [prefill]   seconds_fixed, seconds_per_token          pf(P) = fixed + per_token * P
    [decode]    batch = [1, 2, 4, 8, 16], step_seconds = [...]   one step with n live sequences
    [verifier]  seconds_fixed, seconds_per_candidate      (optional) scoring k candidates
    [draft]     acceptance, speedup                       (optional) speculative decoding at N = 1
    [load]      seconds
    [online]    alpha, decode, prefill, verifier, observations   moving average of ln(actual/predicted)

`measure_profile` measures it on an `Engine`; `DeviceProfile.observe` updates it while serving
(RESEARCH.md §2.3), so a throttled or busy device gets smaller plans. A typo in a hand-edited
profile is an error that names the field.
"""

from __future__ import annotations

import difflib
import math
import os
import statistics
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from edgetts.errors import ConfigError

SCHEMA_VERSION = 1
BATCHES = (1, 2, 4, 8, 16)
COMPONENTS = ("prefill", "decode", "verifier")


def cache_dir() -> Path:
    """Where measured profiles, calibrations and the decision log live ($EDGETTS_CACHE overrides)."""
    if os.environ.get("EDGETTS_CACHE"):
        return Path(os.environ["EDGETTS_CACHE"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edgetts"


@dataclass
class DeviceProfile:
    name: str
    source: str  # "measured" here, or "estimate" for a shipped reference that was not measured
    model: str
    runtime: str
    device: str
    prefill_fixed: float
    prefill_per_token: float
    batch: list[int]
    step_seconds: list[float]
    load_seconds: float = 0.0
    verifier_fixed: float | None = None
    verifier_per_candidate: float | None = None
    draft_acceptance: float | None = None
    draft_speedup: float | None = None
    host: str = ""
    measured_at: str = ""
    note: str = ""
    alpha: float = 0.25
    log_ratio: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))
    observations: int = 0
    decode_by_batch: list[float] = field(default_factory=list)  # per batch-table entry, like log_ratio

    def __post_init__(self) -> None:
        if len(self.batch) != len(self.step_seconds) or not self.batch:
            raise ConfigError(f"profile {self.name!r}: decode.batch and decode.step_seconds must be non-empty "
                              f"lists of the same length (got {len(self.batch)} and {len(self.step_seconds)})")
        if sorted(self.batch) != list(self.batch) or self.batch[0] < 1:
            raise ConfigError(f"profile {self.name!r}: decode.batch must be increasing sizes >= 1, got {self.batch}")
        if any(s <= 0 for s in self.step_seconds):
            raise ConfigError(f"profile {self.name!r}: decode.step_seconds must all be > 0, got {self.step_seconds}")
        self.decode_by_batch = list(self.decode_by_batch) or [0.0] * len(self.batch)
        if len(self.decode_by_batch) != len(self.batch):
            raise ConfigError(f"profile {self.name!r}: online.decode_by_batch needs one entry per decode.batch size")

    # predictions ------------------------------------------------------------------------
    def scale(self, component: str) -> float:
        """The online correction factor of a component: exp(moving average of ln(actual/predicted))."""
        return math.exp(self.log_ratio.get(component, 0.0))

    def prefill_s(self, n_tokens: int) -> float:
        return (self.prefill_fixed + self.prefill_per_token * n_tokens) * self.scale("prefill")

    def step_s(self, n: float) -> float:
        """One decode step with `n` live sequences: piecewise linear in n, linear beyond the table."""
        steps = [s * math.exp(g) for s, g in zip(self.step_seconds, self._batch_corrections())]
        return _interpolate(self.batch, steps, max(n, 1.0)) * self.scale("decode")

    def _batch_corrections(self) -> list[float]:
        """The per-batch decode corrections, with each batch size above the largest one observed taking
        that one's: a device seen slowing at batch 8 slows at 16 too (a busy machine slows larger
        batches more, not less), while smaller batches keep their own measurements."""
        seen = [i for i, g in enumerate(self.decode_by_batch) if g != 0.0]
        if not seen:
            return self.decode_by_batch
        top = seen[-1]
        return self.decode_by_batch[:top + 1] + [self.decode_by_batch[top]] * (len(self.decode_by_batch) - top - 1)

    def verify_s(self, n_candidates: int) -> float:
        if self.verifier_fixed is None or n_candidates <= 0:
            return 0.0
        raw = self.verifier_fixed + (self.verifier_per_candidate or 0.0) * n_candidates
        return raw * self.scale("verifier")

    @property
    def has_verifier(self) -> bool:
        return self.verifier_fixed is not None

    # online update (RESEARCH.md §2.3) ---------------------------------------------------
    def observe(self, component: str, predicted: float, actual: float, batch: int | None = None) -> None:
        """Fold one measured/predicted ratio into the component's moving average of ln(ratio).

        `predicted` must be the profile's own prediction (already scaled), so the average tracks the
        ratio to the raw measurement. For "decode", pass the `batch` size observed: the correction is
        then kept per entry of the batch table (a busy machine slows large batches more than small).
        """
        if component not in COMPONENTS:
            raise ConfigError(f"unknown profile component {component!r}; valid: {', '.join(COMPONENTS)}")
        if predicted <= 0 or actual <= 0:
            return
        step = self.alpha * math.log(actual / predicted)
        if component == "decode" and batch is not None:
            for i, weight in _bracket(self.batch, batch):
                self.decode_by_batch[i] += weight * step
        else:
            self.log_ratio[component] = self.log_ratio.get(component, 0.0) + step
        self.observations += 1

    def speed_summary(self) -> str:
        return (f"prefill {self.prefill_per_token * 1e3:.2f} ms/token, decode step "
                f"{self.step_s(1) * 1e3:.1f} ms at n=1 and {self.step_s(self.batch[-1]) * 1e3:.1f} ms at "
                f"n={self.batch[-1]}")


def _bracket(xs: Sequence[float], x: float) -> list[tuple[int, float]]:
    """(index, weight) of the table entries that linear interpolation at x uses."""
    if x <= xs[0]:
        return [(0, 1.0)]
    for i in range(len(xs) - 1):
        if x <= xs[i + 1]:
            w = (x - xs[i]) / (xs[i + 1] - xs[i])
            return [(i, 1.0 - w), (i + 1, w)]
    return [(len(xs) - 1, 1.0)]


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if len(xs) == 1:
        return ys[0] * x / xs[0] if x > xs[0] else ys[0]
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = (xs[-2], ys[-2]), (xs[-1], ys[-1])
    return y1 + max(y1 - y0, 0.0) / (x1 - x0) * (x - x1)


# --- TOML schema ------------------------------------------------------------------------------

# section -> {toml key: (DeviceProfile attribute, type, required)}
SCHEMA: dict[str, dict[str, tuple[str, type | tuple, bool]]] = {
    "profile": {"schema": ("", int, True), "name": ("name", str, True), "source": ("source", str, True),
                "model": ("model", str, True), "runtime": ("runtime", str, True), "device": ("device", str, True),
                "host": ("host", str, False), "measured_at": ("measured_at", str, False),
                "note": ("note", str, False)},
    "prefill": {"seconds_fixed": ("prefill_fixed", float, True),
                "seconds_per_token": ("prefill_per_token", float, True)},
    "decode": {"batch": ("batch", list, True), "step_seconds": ("step_seconds", list, True)},
    "verifier": {"seconds_fixed": ("verifier_fixed", float, True),
                 "seconds_per_candidate": ("verifier_per_candidate", float, True)},
    "draft": {"acceptance": ("draft_acceptance", float, True), "speedup": ("draft_speedup", float, True)},
    "load": {"seconds": ("load_seconds", float, True)},
    "online": {"alpha": ("alpha", float, False), "observations": ("observations", int, False),
               **{c: ("", float, False) for c in COMPONENTS},
               "decode_by_batch": ("decode_by_batch", list, False)},
}
OPTIONAL_SECTIONS = {"verifier", "draft", "online"}
SOURCES = ("measured", "estimate")


def from_toml_dict(data: dict, origin: str = "profile") -> DeviceProfile:
    """Validate a parsed TOML document against SCHEMA; every problem names the field."""
    _check_names(data, SCHEMA, origin, "section")
    kwargs: dict = {}
    for section, spec in SCHEMA.items():
        if section not in data:
            if section not in OPTIONAL_SECTIONS:
                raise ConfigError(f"{origin}: missing section [{section}] (fields: {', '.join(spec)})")
            continue
        table = data[section]
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {section} must be a table [{section}], got {type(table).__name__}")
        _check_names(table, spec, origin, "field", prefix=f"{section}.")
        for key, (attr, kind, required) in spec.items():
            if key not in table:
                if required:
                    raise ConfigError(f"{origin}: missing field {section}.{key}")
                continue
            value = _typed(table[key], kind, f"{origin}: {section}.{key}")
            if attr:
                kwargs[attr] = value
    _check_header(data["profile"], kwargs, origin)
    online = data.get("online", {})
    kwargs["log_ratio"] = {c: float(online.get(c, 0.0)) for c in COMPONENTS}
    kwargs["batch"] = [int(_typed(b, int, f"{origin}: decode.batch")) for b in kwargs["batch"]]
    kwargs["step_seconds"] = [_typed(s, float, f"{origin}: decode.step_seconds") for s in kwargs["step_seconds"]]
    if "decode_by_batch" in kwargs:
        kwargs["decode_by_batch"] = [_typed(g, float, f"{origin}: online.decode_by_batch")
                                     for g in kwargs["decode_by_batch"]]
    try:
        return DeviceProfile(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def _check_header(header: dict, kwargs: dict, origin: str) -> None:
    if header["schema"] != SCHEMA_VERSION:
        raise ConfigError(f"{origin}: profile.schema = {header['schema']} is not supported (this edgetts reads "
                          f"schema {SCHEMA_VERSION}); re-measure with `edgetts profile`")
    if kwargs["source"] not in SOURCES:
        raise ConfigError(f"{origin}: profile.source = {kwargs['source']!r}; valid: {', '.join(SOURCES)}")


def _check_names(table: dict, spec: dict, origin: str, what: str, prefix: str = "") -> None:
    for key in table:
        if key not in spec:
            near = difflib.get_close_matches(key, list(spec), n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid: {', '.join(spec)}"
            raise ConfigError(f"{origin}: unknown {what} {prefix}{key}{hint}")


def _typed(value, kind, where: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


def to_toml_dict(p: DeviceProfile) -> dict:
    doc = {}
    for section, spec in SCHEMA.items():
        table = {key: getattr(p, attr) for key, (attr, _, _) in spec.items() if attr and getattr(p, attr) is not None}
        doc[section] = table
    doc["profile"] = {"schema": SCHEMA_VERSION, **doc["profile"]}
    doc["online"].update({c: round(p.log_ratio.get(c, 0.0), 6) for c in COMPONENTS})
    for section in OPTIONAL_SECTIONS - {"online"}:
        if not doc[section] or len(doc[section]) < len(SCHEMA[section]):
            del doc[section]
    return doc


def dumps(doc: dict) -> str:
    """TOML for our flat schema: tables of strings, numbers and lists of numbers."""
    lines: list[str] = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, float):
        return repr(float(f"{value:.6g}"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def load_profile(path: str | Path) -> DeviceProfile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no profile at {path}; measure one with `edgetts profile`")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix it or delete it and run `edgetts profile`") from exc
    return from_toml_dict(data, origin=str(path))


def save_profile(profile: DeviceProfile, path: str | Path) -> Path:
    from edgetts.export.atomic import write_text_atomic

    return write_text_atomic(path, dumps(to_toml_dict(profile)))


def profile_path(key: str) -> Path:
    return cache_dir() / "profiles" / f"{key}.toml"


def reference_profiles() -> dict[str, DeviceProfile]:
    """The profiles shipped in edgetts.profiles, by file stem."""
    from importlib.resources import files

    out = {}
    for entry in files("edgetts.profiles").iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = from_toml_dict(tomllib.loads(entry.read_text()), origin=entry.name)
    return out


# --- measuring --------------------------------------------------------------------------------

@dataclass
class _Task:
    label: str
    run: Callable[[], None]


def _median_time(fn: Callable[[], float], repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(fn() for _ in range(repeats))


def _prefill_seconds(engine, tokens: list[int]) -> float:
    seq = _free_ids(engine, 1)[0]
    start = time.perf_counter()
    engine.eval(seq, tokens)
    elapsed = time.perf_counter() - start
    engine.release(seq)
    return elapsed


def _step_seconds(engine, prompt: list[int], n: int, steps: int) -> float:
    """Median time of one decode step with n live sequences forked from one prompt, as `sample_n`
    serves it: the batched eval plus, per row, the sampler and the text tracker (detokenising and
    stop checks), which on a small model cost as much as the forward pass."""
    from edgetts.calibration import MIN_P, TEMPERATURE
    from edgetts.generate import TextTracker
    from edgetts.sampling import Sampler
    from edgetts.types import SamplingParams

    ids = _free_ids(engine, n + 1)
    root, live = ids[0], ids[1:]
    engine.eval(root, prompt)
    for seq in live:
        engine.fork(root, seq)
    sampler = Sampler(SamplingParams(temperature=TEMPERATURE, min_p=MIN_P, seed=0))  # as the plans sample
    trackers = {seq: TextTracker(engine.tokenizer) for seq in live}
    token, times = prompt[-1], []
    try:
        for _ in range(steps):
            start = time.perf_counter()
            rows = engine.eval_batch({seq: [token] for seq in live})
            for seq, row in rows.items():
                drawn, logprob = sampler(row[-1], prompt + trackers[seq].tokens)
                trackers[seq].add(token if drawn in engine.tokenizer.eos_ids else drawn, logprob)
            times.append(time.perf_counter() - start)
    finally:
        for seq in ids:
            engine.release(seq)
    return statistics.median(times)


def _free_ids(engine, k: int) -> list[int]:
    free = [s for s in range(engine.info.n_seq_max) if engine.n_tokens(s) == 0]
    if len(free) < k:
        raise ConfigError(f"profiling needs {k} free sequence ids but the engine has {len(free)}; "
                          "load it with a larger n_seq_max")
    return free[:k]


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares y = a + b x with a, b >= 0 (costs are never negative)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = max(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var, 0.0) if var else 0.0
    a = max(my - b * mx, 0.0)
    return a, b


def _sample_tokens(engine, n: int) -> list[int]:
    text = "What is 37*48+15? 37*48=1776, 1776+15=1791. Answer: 1791\n"
    base = engine.tokenizer.encode(text * (n // 8 + 1), add_special=False)
    return base[:n]


def _distinct(candidate: str, n: int) -> list[str]:
    """n versions of `candidate` that part at its first digit, as real samples part after the prompt.

    A verifier shares the tokens its candidates have in common and scores only the rest; timing it
    on n copies of one text would time almost nothing per candidate (it once read 0.2 ms per
    candidate for a verifier that takes 21 ms each on real samples).
    """
    first = next((i for i, ch in enumerate(candidate) if ch.isdigit()), None)
    if first is None:
        return [f"{i} {candidate}" for i in range(n)]
    return [candidate[:first] + str((int(candidate[first]) + i) % 10) + candidate[first + 1:] for i in range(n)]


def measure_profile(engine, *, name: str, model: str, verifier=None, verifier_candidate: str | None = None,
                    draft: Callable[[], tuple[float, float]] | None = None, load_seconds: float = 0.0,
                    batches: Sequence[int] = BATCHES, prompt_tokens: int = 32, steps: int = 16,
                    repeats: int = 7, progress: bool = False) -> DeviceProfile:
    """Measure prefill, decode at each batch size, the verifier and the drafter on `engine`.

    `verifier`: a `Verifier` to time on 1 and 8 candidates. `draft`: a callable returning
    (acceptance, speedup over plain decoding), measured by the caller's speculative decoder.
    """
    usable = [b for b in batches if b + 1 <= engine.info.n_seq_max]
    prompt = _sample_tokens(engine, prompt_tokens)
    lengths = [max(prompt_tokens // 4, 2), prompt_tokens, 3 * prompt_tokens]
    results: dict[str, object] = {}

    def prefill():
        times = [_median_time(lambda n=n: _prefill_seconds(engine, _sample_tokens(engine, n)), repeats)
                 for n in lengths]
        results["prefill"] = _fit_line(lengths, times)

    rounds: dict[int, list[float]] = {n: [] for n in usable}

    def decode_round():
        # every batch size once per round: a burst of load on a shared machine then skews all
        # sizes alike instead of one (it made batch 4 look 1.8x slower than batch 2 once)
        for n in usable:
            rounds[n].append(_step_seconds(engine, prompt, n, steps))
            results[n] = statistics.median(rounds[n])

    tasks = [_Task("prefill", prefill)] + [_Task(f"decode {r + 1}/{repeats}", decode_round) for r in range(repeats)]
    if verifier is not None:
        candidates = _distinct(verifier_candidate or "\n37*40=1480, 37*8=296, 1480+296=1776, 15+1776=1791\nAnswer: 1791", 8)

        def verify():
            one = _median_time(lambda: _timed(lambda: verifier.score("What is 37*48+15?", candidates[:1])), repeats)
            eight = _median_time(lambda: _timed(lambda: verifier.score("What is 37*48+15?", candidates)), repeats)
            results["verifier"] = (max(one - (eight - one) / 7, 0.0), max((eight - one) / 7, 1e-6))
        tasks.append(_Task("verifier", verify))
    if draft is not None:
        tasks.append(_Task("drafter", lambda: results.__setitem__("draft", draft())))
    _run_tasks(tasks, progress)
    return _assemble(engine, name, model, results, usable, load_seconds)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run_tasks(tasks: list[_Task], progress: bool) -> None:
    if not progress:
        for task in tasks:
            task.run()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("profiling this device: {task.description:<14}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        job = bar.add_task("", total=len(tasks))
        for task in tasks:
            bar.update(job, description=task.label)
            task.run()
            bar.advance(job)


def _assemble(engine, name, model, results, usable, load_seconds) -> DeviceProfile:
    import platform

    fixed, per_token = results["prefill"]
    ver = results.get("verifier", (None, None))
    acc, speedup = results.get("draft", (None, None))
    return DeviceProfile(
        name=name, source="measured", model=model, runtime=engine.info.runtime, device=engine.info.device,
        prefill_fixed=fixed, prefill_per_token=per_token, batch=list(usable),
        step_seconds=[results[n] for n in usable], load_seconds=load_seconds,
        verifier_fixed=ver[0], verifier_per_candidate=ver[1], draft_acceptance=acc, draft_speedup=speedup,
        host=f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cpus",
        measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


__all__ = ["DeviceProfile", "measure_profile", "load_profile", "save_profile", "profile_path", "cache_dir",
           "reference_profiles", "from_toml_dict", "to_toml_dict", "dumps"]

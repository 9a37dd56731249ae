"""Drafters for speculative decoding: what proposes the tokens the target then verifies.

A drafter has four calls: `attach(target)` (check it fits the target), `prepare(context)` (warm
up on the prompt, outside the timed rounds), `propose(context, k, sampler)` -> (tokens, q per
token: the distribution the token was drawn from, or None when drafting is deterministic), and
`reset()`.

- `ModelDrafter`: any `Engine` with the target's vocabulary (a small draft model);
- `EarlyExitDrafter`: the target's own first K layers (an exported `--layers K` artifact, or
  the torch engine's `n_layers=K`): self-speculation;
- `NGramDrafter`: prompt lookup, no model at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetts.engine import Engine
from edgetts.errors import ConfigError, EdgettsError, ModelNotFoundError
from edgetts.sampling import Sampler, draw

PROBE_TEXT = "Hello, world! What is 37*48+15? Zürich 日本 \n\tdef f(x): return x"


class NGramDrafter:
    """Prompt lookup: find the latest earlier occurrence of the last n tokens and draft what followed."""

    policy = None  # its DraftPolicy, kept across generations (edgetts.speculative.policy_for)

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ConfigError(f"n-gram sizes min={min_ngram}, max={max_ngram} are invalid: need 1 <= min <= max")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.name = "ngram"

    def attach(self, target: Engine) -> None:
        pass

    def prepare(self, context: Sequence[int]) -> None:
        pass

    def propose(self, context: Sequence[int], k: int, sampler: Sampler) -> tuple[list[int], list[None]]:
        context, tokens = list(context), []
        while len(tokens) < k:  # a match near the end drafts a short run: continue the pattern through it
            more = lookup(context + tokens, k - len(tokens), self.max_ngram, self.min_ngram)
            if not more:
                break
            tokens += more
        return tokens, [None] * len(tokens)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


def lookup(context: Sequence[int], k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Up to k tokens that followed the most recent earlier match of the longest matching suffix n-gram."""
    ctx = list(context)
    for n in range(min(max_ngram, len(ctx) - 1), min_ngram - 1, -1):
        suffix, last = ctx[-n:], ctx[-1]
        for end in range(len(ctx) - 2, n - 2, -1):  # a plain scan: contexts are short, numpy calls cost more
            if ctx[end] == last and ctx[end - n + 1 : end + 1] == suffix:
                return ctx[end + 1 : end + 1 + k]
    return []


class ModelDrafter:
    """A small model drafts autoregressively on its own `Engine`; its KV follows the committed text."""

    policy = None  # its DraftPolicy, kept across generations (edgetts.speculative.policy_for)

    def __init__(self, engine: Engine, name: str = "draft-model", seq: int = 0, min_confidence: float = 0.0,
                 owns_engine: bool = True):
        self.engine, self.name, self.seq = engine, name, seq
        self.min_confidence = min_confidence  # stop drafting below this top probability (0: never)
        self.owns_engine = owns_engine
        self.cached: list[int] = []  # the tokens the draft engine's KV holds for `seq`
        self.n_vocab: int | None = None

    def attach(self, target: Engine) -> None:
        check_compatible(target, self.engine, self.name)
        self.n_vocab = target.info.n_vocab

    def prepare(self, context: Sequence[int]) -> None:
        self._sync(list(context))

    def propose(self, context: Sequence[int], k: int, sampler: Sampler) -> tuple[list[int], list]:
        context = list(context)
        if len(context) + k > self.engine.info.n_ctx:
            return [], []
        row = self._sync(context)
        tokens, qs = [], []
        for i in range(k):
            if i and self._confidence(row, sampler, context + tokens) < self.min_confidence:
                break
            q = None if sampler.params.greedy else sampler.probs(row, context + tokens)  # None: drafted by argmax
            tokens.append(sampler.argmax(row, context + tokens) if q is None else draw(q, sampler.rng))
            qs.append(q)
            if i < k - 1:
                row = self._eval(tokens[-1:])
        return tokens, qs

    def _confidence(self, row, sampler: Sampler, history) -> float:
        if not self.min_confidence:
            return 1.0
        logits = sampler.filtered_logits(row, history)
        return float(1 / np.exp(logits - logits.max()).sum())

    def _sync(self, context: list[int]) -> np.ndarray:
        """Bring the draft KV to `context` (reusing the common prefix); return the logits after it."""
        if self.engine.n_tokens(self.seq) != len(self.cached):
            self.engine.release(self.seq)
            self.cached = []
        common = min(_common_prefix(self.cached, context), len(context) - 1)
        self.engine.truncate(self.seq, common)
        self.cached = self.cached[:common]
        return self._eval(context[common:])

    def _eval(self, tokens: list[int]) -> np.ndarray:
        # Catching up on many tokens needs only the last row: an engine's optional `prefill` skips the
        # LM head elsewhere (on a 150k vocabulary that head is most of a small draft model's cost).
        prefill = getattr(self.engine, "prefill", None) if len(tokens) > 1 else None
        row = (prefill or self.engine.eval)(self.seq, tokens)[-1]
        self.cached += tokens
        return _fit_vocab(row, self.n_vocab)

    def reset(self) -> None:
        self.engine.release(self.seq)
        self.cached = []

    def close(self) -> None:
        if self.owns_engine:
            self.engine.close()


class EarlyExitDrafter(ModelDrafter):
    """Self-speculation: the target's first K layers (+ final norm + LM head) draft for it."""

    def __init__(self, engine: Engine, layers: int, **options):
        super().__init__(engine, name=f"early-exit:{layers}", **options)
        self.layers = layers

    @classmethod
    def for_model(cls, model: str | Path, layers: int, runtime: str | None = None,
                  **engine_options) -> EarlyExitDrafter:
        """Load the first-`layers` drafter of `model` on `runtime` (default: the model's own; see
        `early_exit_artifact`)."""
        from edgetts.runtimes import detect_runtime, load, resolve

        runtime = resolve(runtime).name if runtime else detect_runtime(model)
        path, options = early_exit_artifact(model, layers, runtime)
        return cls(load(path, **options, **engine_options), layers)


# The artifact a drafter runtime loads: (export format, suffix of its path).
RUNTIME_ARTIFACTS = {"llama.cpp": ("gguf", ".gguf"), "onnxruntime": ("onnx", "")}


def early_exit_artifact(model: str | Path, layers: int, runtime: str) -> tuple[Path, dict]:
    """Where the first-K-layers drafter of `model` for `runtime` lives, and the load options it needs.

    A Hugging Face folder is cut at load time (torch engine, n_layers=K). GGUF/ONNX drafters are
    artifacts of `edgetts export ... --layers K` beside the model: `<stem>.layers<K><suffix>` or
    `<stem>.k<K><suffix>`. The drafter may run on another runtime than the model (an ONNX target
    drafted for by llama.cpp, whose small steps cost less): its artifact is then in that runtime's
    format. A missing one is exported there when the model is a Hugging Face folder or records (GGUF
    metadata, ONNX manifest) a Hugging Face source that is on this machine.
    """
    from edgetts.runtimes import detect_runtime

    if layers < 1:
        raise ConfigError(f"early-exit:{layers} is invalid: K must be >= 1")
    model = Path(model)
    own = detect_runtime(model)
    if runtime == "torch":
        return _hf_source(model, own), {"n_layers": layers, "runtime": "torch"}
    if runtime not in RUNTIME_ARTIFACTS:
        raise ConfigError(f"an early-exit drafter cannot run on {runtime}; use torch or "
                          f"{' or '.join(RUNTIME_ARTIFACTS)}")
    fmt, suffix = RUNTIME_ARTIFACTS[runtime]
    stem = model.name[: len(model.name) - len(model.suffix)]
    if runtime == own:
        suffix = model.suffix  # the model's own spelling, as `edgetts export --layers` users name it
    candidates = [model.with_name(f"{stem}.{tag}{layers}{suffix}") for tag in ("layers", "k")]
    found = next((path for path in candidates if path.exists()), None)
    if found is None and _export_beside(model, own, candidates[0], fmt, layers, same_format=runtime == own):
        found = candidates[0]
    if found is None:
        raise ModelNotFoundError(
            f"no early-exit artifact with {layers} layers beside {model} (looked for "
            f"{' and '.join(p.name for p in candidates)}); export one with `edgetts export SOURCE --format "
            f"{fmt} --layers {layers} --out {candidates[0]}`, or pass it as --draft PATH"
        )
    return found, {}


def _hf_source(model: Path, own: str) -> Path:
    """The Hugging Face folder behind `model`: the model itself, or the source its export recorded."""
    source = model if own == "torch" else provenance(model)[0]
    if not source or not Path(source).is_dir():
        raise ModelNotFoundError(f"an early-exit drafter on torch needs the Hugging Face source of {model}, "
                                 "which it does not record or which is not on this machine")
    return Path(source)


def _export_beside(model: Path, own: str, out: Path, fmt: str, layers: int, same_format: bool) -> bool:
    """Export the first-K-layers drafter from the model's Hugging Face source, if that is here (in
    the model's own quantization when the format is the same)."""
    source, quant = (model, None) if own == "torch" else provenance(model)
    if not source or not Path(source).is_dir():
        return False
    from edgetts.export import export

    export(source, out, format=fmt, quant=quant if same_format else None, layers=layers, progress=False)
    return True


def provenance(model: Path) -> tuple[str | None, str | None]:
    """(source checkpoint, quant) an edgetts export recorded, or (None, None)."""
    import json

    try:
        if model.suffix == ".gguf":
            from edgetts.runtimes.gguf_file import read_header

            meta = read_header(model).metadata
            return meta.get("edgetts.source"), meta.get("edgetts.quant")
        manifest = json.loads((model / "manifest.json").read_text())
        quant = manifest.get("quant")
        return manifest.get("source"), quant.get("name") if isinstance(quant, dict) else quant
    except (OSError, ValueError, EdgettsError):
        return None, None


def check_compatible(target: Engine, draft: Engine, name: str = "draft model") -> None:
    """Refuse a drafter whose tokens mean something else to the target."""
    t, d = target.tokenizer, draft.tokenizer
    problems = []
    if t.vocab_size != d.vocab_size:
        problems.append(f"vocabulary {d.vocab_size} tokens vs the target's {t.vocab_size}")
    elif t.encode(PROBE_TEXT, add_special=False) != d.encode(PROBE_TEXT, add_special=False):
        problems.append("it splits text into different tokens")
    if t.eos_ids != d.eos_ids:
        problems.append(f"end-of-sequence ids {sorted(d.eos_ids)} vs the target's {sorted(t.eos_ids)}")
    if problems:
        raise ConfigError(
            f"{name} cannot draft for this model: {'; '.join(problems)}. Use a draft model trained with "
            "the same tokenizer, or --draft ngram"
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _fit_vocab(row: np.ndarray, n_vocab: int | None) -> np.ndarray:
    """Draft logits in the target's vocabulary size (padded rows differ between checkpoints)."""
    if n_vocab is None or row.shape[0] == n_vocab:
        return row
    if row.shape[0] > n_vocab:
        return row[:n_vocab]
    return np.concatenate([row, np.full(n_vocab - row.shape[0], -np.inf, dtype=row.dtype)])


def make_drafter(spec: str | None, model: str | Path | None = None, runtime: str | None = None, **engine_options):
    """A drafter from the CLI spelling: None, "ngram", "early-exit:K" or a path to a draft model.

    `runtime` runs a model drafter on another runtime than the target's (default: the target's for
    early-exit:K, the artifact's own for a path).
    """
    if not spec:
        return None
    if spec == "ngram":
        return NGramDrafter()
    if spec.startswith("early-exit:"):
        layers = spec.split(":", 1)[1]
        if not layers.isdigit():
            raise ConfigError(f"--draft {spec!r} is invalid: write early-exit:K with K the number of layers, e.g. early-exit:2")
        if model is None:
            raise ConfigError("--draft early-exit:K needs --model: the drafter is that model's first K layers")
        return EarlyExitDrafter.for_model(model, int(layers), runtime, **engine_options)
    from edgetts.runtimes import load

    if not Path(spec).exists():
        raise ModelNotFoundError(f"--draft {spec!r}: no such file or folder; pass a draft model path, ngram or early-exit:K")
    return ModelDrafter(load(spec, runtime=runtime, **engine_options), name=f"draft:{Path(spec).name}")

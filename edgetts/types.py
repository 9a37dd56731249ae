"""Plain data shared by every layer: what an engine is, how to sample."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from edgetts.errors import ConfigError


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is and can do, declared up front (never discovered by trial and error)."""

    runtime: str  # registry name: "torch", "llama.cpp", "onnxruntime", "fake"
    device: str  # where it actually runs: "cpu", "cuda:0", "CPUExecutionProvider", ...
    arch: str  # model architecture, e.g. "llama", "qwen2"
    n_layers: int
    n_ctx: int  # positions a sequence may hold
    n_vocab: int
    n_seq_max: int  # sequence ids are 0 .. n_seq_max-1
    quant: str = "f32"
    early_exit_layers: int | None = None  # set when the artifact is a first-K-layers drafter
    gpu_offload: bool = False  # the build can place layers on a GPU
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplingParams:
    """How to turn logits into a token. temperature 0 means argmax."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")
        _check(self.top_k >= 0, "top_k", self.top_k, "must be >= 0 (0 turns it off)")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _check(0 <= self.min_p < 1, "min_p", self.min_p, "must be in [0, 1)")
        _check(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "must be > 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check(ok: bool, name: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: {rule}")


@dataclass
class Completion:
    """One generated continuation: what decoding returns and what test-time scaling aggregates."""

    text: str
    tokens: list[int]
    logprobs: list[float]  # log-probability of each generated token under the sampling distribution
    finish_reason: str  # "stop" (EOS or stop string), "length" (max tokens), "deadline" (budget ran out)
    seconds: float = 0.0
    rewound: int = 0  # tokens drawn and then taken back by step repair (they cost decode steps too)

    @property
    def decode_steps(self) -> int:
        """Decode steps this sample took: its tokens plus the ones a step repair took back."""
        return len(self.tokens) + self.rewound

    @property
    def sum_logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / max(len(self.logprobs), 1)

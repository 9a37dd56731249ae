"""ONNX Runtime engine over an exported decoder with explicit KV tensors (optimum's naming).

Inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key|value`; outputs
`logits`, `present.{i}.key|value`. The graph itself appends the new keys/values to the past ones.

KV bookkeeping, built so that steady-state decoding copies no KV in Python:
- The sequences of the last `eval_batch` stay *resident*: the batch's `present` tensors (ONNX Runtime
  values, on the accelerator when there is one) are fed straight back as the next step's `past`.
  Rows are left-aligned at different lengths; the attention mask marks which columns are real.
- A sequence outside the resident batch is *stored*: one array (2 x layers, kv_heads, positions,
  head_dim). Fork shares the source's array (nothing writes into it), truncate slices it.
- Only when the set of sequences changes (a fork, a release, a different batch) are the resident
  rows unpacked to storage and the new batch packed, once.
- Truncating a resident row just masks its dropped columns (speculative rollback costs no copy);
  the batch is compacted when masked columns pile up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgetts.engine import BaseEngine
from edgetts.errors import InvalidArtifactError, ModelNotFoundError
from edgetts.runtimes.providers import CPU, open_session
from edgetts.tokenizer import HFTokenizer
from edgetts.types import EngineInfo

# Providers whose KV we keep in device memory between steps (others take and give host memory).
DEVICE_MEMORY = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}
ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32}
SLACK = 64  # masked columns tolerated before the resident batch is compacted


@dataclass
class KVLayout:
    """Names, shape and dtype of the graph's KV tensors, read from the session."""

    past: list[str]  # past_key_values.0.key, past_key_values.0.value, ...
    present: list[str]
    kv_heads: int
    head_dim: int
    dtype: type
    int_types: dict[str, type]  # input_ids / attention_mask / position_ids dtypes

    @classmethod
    def from_session(cls, session) -> KVLayout:
        inputs = {i.name: i for i in session.get_inputs()}
        past = [n for n in inputs if n.startswith("past_key_values.")]
        if not past or "input_ids" not in inputs:
            raise InvalidArtifactError(
                "this ONNX model has no past_key_values.* inputs: export it with KV cache "
                "(`edgetts export MODEL --format onnx`, optimum's text-generation-with-past)")
        outputs = {o.name for o in session.get_outputs()}
        present = [n.replace("past_key_values.", "present.") for n in past]
        missing = [n for n in present if n not in outputs]
        if missing:
            raise InvalidArtifactError(f"the model lacks KV outputs {missing[:2]}; re-export it with edgetts")
        shape = inputs[past[0]].shape  # (batch, kv_heads, past_len, head_dim)
        ints = {n: ORT_TO_NUMPY[inputs[n].type] for n in ("input_ids", "attention_mask", "position_ids") if n in inputs}
        return cls(past, present, int(shape[1]), int(shape[3]), ORT_TO_NUMPY[inputs[past[0]].type], ints)


@dataclass
class Resident:
    """The sequences of the last batch, whose KV lives in the session's own output tensors."""

    seqs: list[int]
    past: list  # one OrtValue per KV input, (rows, kv_heads, width, head_dim)
    mask: np.ndarray  # (rows, width): 1 where a column is one of that row's positions

    @property
    def width(self) -> int:
        return self.mask.shape[1]


class OnnxEngine(BaseEngine):
    def __init__(self, path: str | Path, device: str | None = None, n_seq_max: int = 64,
                 n_ctx: int | None = None, n_threads: int | None = None,
                 provider_options: dict | None = None, session_options=None, spinning: bool = False):
        super().__init__()
        self.folder, model_file = _locate(Path(path))
        self.model_file = str(model_file)
        config = _read_json(self.folder / "config.json")
        self.manifest = _read_json(self.folder / "manifest.json")
        options = session_options or default_session_options(n_threads, spinning)
        self.session, self.providers = open_session(str(model_file), device, options, provider_options)
        self.kv = KVLayout.from_session(self.session)
        self.kv_device = DEVICE_MEMORY.get(self.providers.used, "cpu")
        self.tokenizer = HFTokenizer.from_dir(self.folder)
        self.info = self._describe(config, n_ctx, n_seq_max)
        self._stored: dict[int, np.ndarray] = {}  # seq -> (2*layers, kv_heads, positions, head_dim)
        self._resident: Resident | None = None

    def _describe(self, config: dict, n_ctx: int | None, n_seq_max: int) -> EngineInfo:
        quant = self.manifest.get("quant", {}).get("name", "fp32")
        n_vocab = self.session.get_outputs()[0].shape[-1]
        return EngineInfo(
            runtime="onnxruntime", device=self.providers.used, arch=config.get("model_type", "unknown"),
            n_layers=len(self.kv.past) // 2, n_ctx=n_ctx or config.get("max_position_embeddings", 2048),
            n_vocab=n_vocab if isinstance(n_vocab, int) else config["vocab_size"], n_seq_max=n_seq_max,
            quant=quant, early_exit_layers=self.manifest.get("early_exit_layers"),
            gpu_offload=self.providers.used != CPU,
            extra={"providers": self.providers.to_dict(),
                   "batch_invariant": self.manifest.get("quant", {}).get("batch_invariant", True)},
        )

    def node_placement(self) -> dict[str, int]:
        """How many graph nodes ran on each provider in one decode step (from ONNX Runtime's profiler)."""
        from edgetts.runtimes.providers import node_placement

        feeds = {"input_ids": np.zeros((1, 1), self.kv.int_types["input_ids"]),
                 "attention_mask": np.ones((1, 1), self.kv.int_types.get("attention_mask", np.int64))}
        if "position_ids" in self.kv.int_types:
            feeds["position_ids"] = np.zeros((1, 1), self.kv.int_types["position_ids"])
        empty = np.zeros((1, self.kv.kv_heads, 0, self.kv.head_dim), self.kv.dtype)
        feeds.update({name: empty for name in self.kv.past})
        providers = self.session.get_providers()
        return node_placement(self.model_file, providers, feeds, [self.providers.options.get(p, {}) for p in providers])

    # evaluation ----------------------------------------------------------------------------
    def _eval_batch(self, work: dict[int, list[int]]) -> dict[int, np.ndarray]:
        batch = self._resident_for(list(work))
        rows = len(batch.seqs)
        width = max(len(t) for t in work.values())
        ids = np.zeros((rows, width), dtype=self.kv.int_types["input_ids"])
        new_mask = np.zeros((rows, width), dtype=np.int64)
        positions = np.zeros((rows, width), dtype=np.int64)
        for row, seq in enumerate(batch.seqs):
            tokens = work[seq]
            ids[row, : len(tokens)] = tokens
            new_mask[row, : len(tokens)] = 1
            positions[row] = self.n_tokens(seq) + np.arange(width)
        mask = np.concatenate([batch.mask, new_mask], axis=1)
        logits, batch.past = self._run(ids, mask, positions, batch.past)
        batch.mask = mask
        return {seq: np.asarray(logits[row, : len(work[seq])], dtype=np.float32) for row, seq in enumerate(batch.seqs)}

    def _run(self, ids, mask, positions, past) -> tuple[np.ndarray, list]:
        binding = self.session.io_binding()
        ints = self.kv.int_types
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask.astype(ints.get("attention_mask", np.int64), copy=False))
        if "position_ids" in ints:
            binding.bind_cpu_input("position_ids", positions.astype(ints["position_ids"], copy=False))
        for name, value in zip(self.kv.past, past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.kv.present:
            binding.bind_output(name, self.kv_device, self.providers.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])

    # KV residency --------------------------------------------------------------------------
    def _resident_for(self, seqs: list[int]) -> Resident:
        batch = self._resident
        if batch is not None and set(batch.seqs) == set(seqs) and batch.width <= self._widest(batch) + SLACK:
            return batch
        self._unpack()
        self._resident = self._pack(seqs)
        return self._resident

    def _widest(self, batch: Resident) -> int:
        return max(self.n_tokens(s) for s in batch.seqs)

    def _pack(self, seqs: list[int]) -> Resident:
        """Left-align the stored KV of `seqs` into one batch (the one copy a batch change costs)."""
        lengths = [self.n_tokens(s) for s in seqs]
        width = max(lengths)
        n_tensors = len(self.kv.past)
        block = np.zeros((n_tensors, len(seqs), self.kv.kv_heads, width, self.kv.head_dim), dtype=self.kv.dtype)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, (seq, n) in enumerate(zip(seqs, lengths)):
            if n:
                block[:, row, :, width - n:] = self._stored.pop(seq)
                mask[row, width - n:] = 1
        past = [ort.OrtValue.ortvalue_from_numpy(block[i], self.kv_device, self.providers.device_id)
                for i in range(n_tensors)]
        return Resident(list(seqs), past, mask)

    def _unpack(self) -> None:
        """Move every resident row back to per-sequence storage, keeping only its real columns."""
        batch, self._resident = self._resident, None
        if batch is None:
            return
        block = np.stack([value.numpy() for value in batch.past])  # (tensors, rows, kv_heads, width, head_dim)
        for row, seq in enumerate(batch.seqs):
            self._stored[seq] = block[:, row][:, :, np.flatnonzero(batch.mask[row])]

    def _row_kv(self, seq: int) -> np.ndarray:
        """One sequence's KV as a stored array, without disturbing the resident batch."""
        if seq in self._stored:
            return self._stored[seq]
        batch = self._resident
        row = batch.seqs.index(seq)
        columns = np.flatnonzero(batch.mask[row])
        return np.stack([value.numpy()[row][:, columns] for value in batch.past])

    # Engine hooks --------------------------------------------------------------------------
    def _fork(self, src: int, dst: int) -> None:
        self._stored[dst] = self._row_kv(src)  # stored arrays are never written in place: sharing is safe

    def _truncate(self, seq: int, n: int) -> None:
        if seq in self._stored:
            self._stored[seq] = self._stored[seq][:, :, :n]
            return
        row = self._resident.seqs.index(seq)
        columns = np.flatnonzero(self._resident.mask[row])
        self._resident.mask[row, columns[n:]] = 0  # the columns stay, masked: no copy

    def _release(self, seq: int) -> None:
        if self._resident is not None and seq in self._resident.seqs:
            self._unpack()
        self._stored.pop(seq, None)

    def _close(self) -> None:
        self._resident = None
        self._stored.clear()
        self.session = None


def default_session_options(n_threads: int | None = None, spinning: bool = False):
    options = ort.SessionOptions()
    if n_threads:
        options.intra_op_num_threads = n_threads
    # Idle worker threads sleep instead of busy-waiting between ops: on a laptop or phone with other
    # work running, spinning steals the cores decode needs (measured 3.1 vs 5.5 tok/s on a busy
    # 2-core machine); pass spinning=True on an otherwise idle machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _locate(path: Path) -> tuple[Path, Path]:
    """(folder, model file) for an export folder or a .onnx file inside one."""
    if not path.exists():
        raise ModelNotFoundError(f"{path} does not exist; export a model with `edgetts export MODEL --format onnx`")
    folder = path if path.is_dir() else path.parent
    model = path if path.is_file() else folder / "model.onnx"
    if not model.is_file():
        found = sorted(p.name for p in folder.glob("*.onnx"))
        if len(found) != 1:
            raise ModelNotFoundError(f"{folder} holds {found or 'no .onnx file'}; pass the .onnx file to load")
        model = folder / found[0]
    return folder, model


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

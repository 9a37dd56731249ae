"""llama.cpp engine on llama-cpp-python's low-level API.

One llama_context holds every sequence in a single unified KV cache: `fork` is
`llama_memory_seq_cp` (the prompt's cells are shared, not copied), `truncate`/`release` are
`llama_memory_seq_rm`, and `eval_batch` puts every sequence's new tokens into one `llama_batch`
so N samples decode in one `llama_decode` per step. The file is checked in Python before
llama.cpp opens it, and llama.cpp's own log is silenced.

Threads: `n_threads` fixes them; without it the engine uses every core other processes leave free,
re-judged as it runs (`edgetts.runtimes.cores`). `single_token_threads` sets apart the threads of
one-token decodes (a greedy or speculative step), where a tiny model's step is mostly the pool's
synchronisation.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgetts.engine import BaseEngine
from edgetts.errors import ConfigError, ContextOverflowError, InvalidArtifactError, UnsupportedModelError
from edgetts.runtimes.cores import FreeCores
from edgetts.runtimes.gguf_file import read_header
from edgetts.runtimes.llamacpp_lib import default_threads, llama_cpp
from edgetts.tokenizer import Tokenizer
from edgetts.types import EngineInfo

# general.file_type (llama_ftype) -> the name edgetts uses for the quantization.
FILE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k",
              12: "q3_k_m", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k", 32: "bf16"}
GPU_DEVICES = ("gpu", "cuda", "metal", "vulkan")


class LlamaCppEngine(BaseEngine):
    def __init__(self, path: Path, device: str | None = None, n_ctx: int = 2048, n_seq_max: int = 8,
                 n_threads: int | None = None, n_batch: int = 512, n_gpu_layers: int | None = None,
                 kv_cells: int | None = None, extra_buffers: bool = False, single_token_threads: int | None = None):
        super().__init__()
        header = read_header(path)  # before llama.cpp sees the file
        self._lib = lib = llama_cpp()
        n_gpu_layers = _gpu_layers(device, n_gpu_layers, lib.llama_supports_gpu_offload())
        self._model = _load_model(lib, Path(path), n_gpu_layers, extra_buffers)
        self._vocab = lib.llama_model_get_vocab(self._model)
        n_ctx = min(n_ctx, lib.llama_model_n_ctx_train(self._model) or n_ctx)
        self.n_batch = n_batch
        # no n_threads: every core while other processes leave them free, fewer while they do not
        self._cores = None if n_threads else FreeCores(default_threads())
        self._single = single_token_threads
        threads = n_threads or self._cores.threads
        self._ctx = _new_context(lib, self._model, kv_cells or n_ctx * n_seq_max, n_batch, n_seq_max, threads,
                                 single_token_threads or threads)
        self._threads = threads
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self.tokenizer = LlamaVocabTokenizer(lib, self._model, self._vocab)
        self.info = EngineInfo(
            runtime="llama.cpp", device="gpu" if n_gpu_layers else "cpu", arch=header.arch,
            n_layers=lib.llama_model_n_layer(self._model), n_ctx=n_ctx,
            n_vocab=lib.llama_vocab_n_tokens(self._vocab), n_seq_max=n_seq_max,
            quant=FILE_TYPES.get(header.metadata.get("general.file_type"), "?"),
            early_exit_layers=header.metadata.get("edgetts.early_exit_layers"),
            gpu_offload=bool(lib.llama_supports_gpu_offload()),
            extra=dict(n_threads=n_threads or "auto", single_token_threads=single_token_threads or n_threads or "auto",
                       n_batch=n_batch, n_gpu_layers=n_gpu_layers, extra_buffers=extra_buffers,
                       bits_per_weight=round(header.bits_per_weight, 3), tensor_bytes=header.tensor_bytes,
                       source_layers=header.metadata.get("edgetts.source_layers")),
        )

    # adapter hooks ------------------------------------------------------------------------
    def _eval_batch(self, work: dict[int, list[int]]) -> dict[int, np.ndarray]:
        rows = [(seq, self.n_tokens(seq) + i, token) for seq, tokens in work.items() for i, token in enumerate(tokens)]
        with self._rollback_on_error(work):
            chunks = [self._decode(rows[i : i + self.n_batch]) for i in range(0, len(rows), self.n_batch)]
        logits = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)  # decode steps: no second copy
        out, start = {}, 0
        for seq, tokens in work.items():
            out[seq] = logits[start : start + len(tokens)]
            start += len(tokens)
        return out

    def prefill(self, seq: int, tokens: list[int]) -> np.ndarray:
        """`eval` that returns only the last position's logits (1, n_vocab): skips the LM head
        for every other prompt position. Outside the Engine contract; bookkeeping is the same."""
        checked = self._check_tokens(self._check_id(seq), tokens)
        start = self.n_tokens(seq)
        rows = [(seq, start + i, t) for i, t in enumerate(checked)]
        with self._rollback_on_error([seq]):
            for i in range(0, len(rows), self.n_batch):
                chunk = rows[i : i + self.n_batch]
                last = self._decode(chunk, outputs=[len(chunk) - 1] if i + self.n_batch >= len(rows) else [])
        self._lengths[seq] = start + len(checked)
        return last

    @contextmanager
    def _rollback_on_error(self, seqs):
        """A failure in a later chunk must not leave earlier chunks in the KV cache."""
        try:
            yield
        except BaseException:
            for seq in seqs:
                self._lib.llama_memory_seq_rm(self._memory, seq, self.n_tokens(seq), -1)
            raise

    def _decode(self, rows: list[tuple[int, int, int]], outputs: list[int] | None = None) -> np.ndarray:
        """One llama_decode of (seq, position, token) rows; logits of `outputs` (default: every row)."""
        batch, lib = self._batch, self._lib
        wanted = set(range(len(rows)) if outputs is None else outputs)
        batch.n_tokens = len(rows)
        for i, (seq, pos, token) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i in wanted
        self._adapt_threads()
        code = lib.llama_decode(self._ctx, batch)
        if code == 1:
            raise ContextOverflowError("the llama.cpp KV cache is full (all sequences together); release "
                                       "sequences or load with a larger kv_cells / n_ctx")
        if code != 0:
            raise InvalidArtifactError(f"llama_decode failed with code {code}; run with EDGETTS_LLAMA_LOG=1 to see why")
        if not wanted:
            return np.empty((0, self.info.n_vocab), dtype=np.float32)
        logits = lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(logits, shape=(len(wanted), self.info.n_vocab)).copy()

    def _adapt_threads(self) -> None:
        threads = self._cores.update() if self._cores is not None else self._threads
        if threads != self._threads:
            self._threads = threads
            self._lib.llama_set_n_threads(self._ctx, self._single or threads, threads)

    @property
    def threads(self) -> tuple[int, int]:
        """CPU threads llama.cpp runs (one-token decodes, decodes of several tokens) with now."""
        return self._lib.llama_n_threads(self._ctx), self._lib.llama_n_threads_batch(self._ctx)

    def _fork(self, src: int, dst: int) -> None:
        self._lib.llama_memory_seq_cp(self._memory, src, dst, -1, -1)

    def _truncate(self, seq: int, n: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, seq, n, -1)

    def _release(self, seq: int) -> None:
        self._lib.llama_memory_seq_rm(self._memory, seq, -1, -1)

    def _close(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._lib.llama_model_free(self._model)
            self._ctx = self._model = None

    def __del__(self):
        try:
            self._close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass


def _gpu_layers(device: str | None, n_gpu_layers: int | None, supported: bool) -> int:
    wants_gpu = (device or "cpu").split(":")[0].lower() in GPU_DEVICES
    if device and not wants_gpu and device.lower() != "cpu":
        raise ConfigError(f"device {device!r} is not one llama.cpp knows; use cpu or gpu")
    layers = n_gpu_layers if n_gpu_layers is not None else (-1 if wants_gpu else 0)
    if layers and not supported:
        raise UnsupportedModelError("this llama-cpp-python build is CPU-only; reinstall it with GPU support "
                                    "(e.g. CMAKE_ARGS='-DGGML_CUDA=on' pip install llama-cpp-python) or use device=cpu")
    return 999 if layers < 0 else layers


def _load_model(lib, path: Path, n_gpu_layers: int, extra_buffers: bool):
    params = lib.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    # Extra buffer types (AMX / repacked weights): with them, this llama.cpp build segfaults on
    # any multi-token batch of a quantized model on AMX CPUs (seen here for q8_0, q6_k, q4_k_m,
    # q4_0); the high-level Llama class crashes the same way. Opt in with extra_buffers=True.
    params.use_extra_bufts = extra_buffers
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise InvalidArtifactError(f"llama.cpp could not load {path.name} (architecture or tensors it does not "
                                   "know); re-export it with `edgetts export`, or set EDGETTS_LLAMA_LOG=1 to see why")
    return model


def _new_context(lib, model, kv_cells: int, n_batch: int, n_seq_max: int, threads: int, single_token_threads: int):
    params = lib.llama_context_default_params()
    params.n_ctx = kv_cells
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = n_seq_max
    params.n_outputs_max = n_batch  # the contract returns logits for every position
    params.n_outputs_max_per_seq = 0  # 0 = n_outputs_max (the default, 1, overflows on a prompt)
    params.kv_unified = True  # one cache for all sequences: fork shares the prompt's cells
    params.n_threads, params.n_threads_batch = single_token_threads, threads  # llama.cpp: 1 token, more
    params.no_perf = True
    ctx = lib.llama_init_from_model(model, params)
    if not ctx:
        lib.llama_model_free(model)
        raise ConfigError(f"llama.cpp could not create a context of {kv_cells} KV cells for {n_seq_max} "
                          "sequences (out of memory?); lower n_ctx, n_seq_max or kv_cells")
    return ctx


class LlamaVocabTokenizer(Tokenizer):
    """The tokenizer stored in the GGUF, run by llama.cpp itself (ids match the HF tokenizer)."""

    def __init__(self, lib, model, vocab):
        self._lib, self._vocab = lib, vocab
        self._n = lib.llama_vocab_n_tokens(vocab)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(vocab))
        bos = lib.llama_vocab_bos(vocab)
        self.bos_id = bos if bos >= 0 and self._add_bos else None  # as HF: a BOS only when one is added
        self.eos_ids = frozenset(t for t in (lib.llama_vocab_eos(vocab), lib.llama_vocab_eot(vocab)) if t >= 0)
        template = lib.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8") if template else None

    @property
    def vocab_size(self) -> int:
        return self._n

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self._lib.llama_token * capacity)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:  # cannot happen with one slot per byte, but the API allows it
            buf = (self._lib.llama_token * -n)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, -n, add_special, True)
        return list(buf[:n])

    def decode(self, ids, skip_special: bool = True) -> str:
        """llama.cpp's detokenizer: drops SentencePiece's leading space as HF does."""
        ids = [int(i) for i in ids]
        tokens = (self._lib.llama_token * max(1, len(ids)))(*ids)
        n = -(16 * len(ids) + 16)
        while n < 0:  # a negative result is the size it needs: retry once with that
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_detokenize(self._vocab, tokens, len(ids), buf, len(buf), False, not skip_special)
        return buf.raw[:n].decode("utf-8", errors="replace")

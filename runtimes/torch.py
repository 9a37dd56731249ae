"""Reference engine on a transformers model: the yardstick for parity, not a production path.

Each sequence keeps its own per-layer key/value tensors. A batch left-pads the past caches and
right-pads the new tokens to one rectangle, masks the padding, and runs one forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from edgetts.engine import BaseEngine
from edgetts.tokenizer import HFTokenizer
from edgetts.types import EngineInfo

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (keys, values), each (1, kv_heads, positions, head_dim)


class TorchEngine(BaseEngine):
    def __init__(self, path: Path, device: str | None = None, dtype: str = "float32",
                 n_seq_max: int = 64, n_threads: int | None = None, model=None, n_layers: int | None = None):
        super().__init__()
        if n_threads:
            torch.set_num_threads(n_threads)
        self.device = torch.device(device or "cpu")
        self.model = model or AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
        if n_layers is not None:
            _keep_first_layers(self.model, n_layers)
        self.model.to(self.device).eval()
        self.tokenizer = HFTokenizer.from_dir(path)
        config = self.model.config
        self.info = EngineInfo(
            runtime="torch", device=str(self.device), arch=config.model_type,
            n_layers=config.num_hidden_layers, n_ctx=config.max_position_embeddings,
            n_vocab=config.vocab_size, n_seq_max=n_seq_max, quant=dtype, early_exit_layers=n_layers,
        )
        self._kv: dict[int, KV] = {}

    @torch.inference_mode()
    def _eval_batch(self, work: dict[int, list[int]]) -> dict[int, np.ndarray]:
        seqs = list(work)
        past = [self.n_tokens(s) for s in seqs]
        new = [len(work[s]) for s in seqs]
        width_past, width_new = max(past), max(new)
        ids = torch.zeros(len(seqs), width_new, dtype=torch.long)
        mask = torch.zeros(len(seqs), width_past + width_new, dtype=torch.long)
        positions = torch.zeros(len(seqs), width_new, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : new[row]] = torch.tensor(work[seq])
            mask[row, width_past - past[row] : width_past + new[row]] = 1
            positions[row] = torch.arange(past[row], past[row] + width_new)
        cache = self._padded_cache(seqs, past, width_past)
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
        )
        layers = _cache_layers(out.past_key_values)
        logits = out.logits.float().cpu().numpy()
        result = {}
        for row, seq in enumerate(seqs):
            keep = slice(width_past - past[row], width_past + new[row])
            self._kv[seq] = [(k[row : row + 1, :, keep], v[row : row + 1, :, keep]) for k, v in layers]
            result[seq] = logits[row, : new[row]]
        return result

    def _padded_cache(self, seqs: list[int], past: list[int], width: int) -> DynamicCache:
        cache = DynamicCache()
        if width == 0:
            return cache
        for layer in range(self.info.n_layers):
            keys = [self._left_pad(self._kv[s][layer][0], width) if n else None for s, n in zip(seqs, past)]
            values = [self._left_pad(self._kv[s][layer][1], width) if n else None for s, n in zip(seqs, past)]
            like = next(k for k in keys if k is not None)
            zeros = torch.zeros(1, like.shape[1], width, like.shape[3], dtype=like.dtype, device=like.device)
            cache.update(
                torch.cat([k if k is not None else zeros for k in keys]),
                torch.cat([v if v is not None else zeros for v in values]),
                layer,
            )
        return cache

    @staticmethod
    def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
        missing = width - t.shape[2]
        return torch.nn.functional.pad(t, (0, 0, missing, 0)) if missing else t

    def _fork(self, src: int, dst: int) -> None:
        self._kv[dst] = list(self._kv[src])  # tensors are never written in place, so sharing is safe

    def _truncate(self, seq: int, n: int) -> None:
        self._kv[seq] = [(k[:, :, :n], v[:, :, :n]) for k, v in self._kv[seq]]

    def _release(self, seq: int) -> None:
        self._kv.pop(seq, None)


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer from a transformers cache object or a legacy tuple."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]


def _keep_first_layers(model, n_layers: int) -> None:
    """Cut a decoder to its first n_layers (final norm and LM head stay): an early-exit drafter."""
    from edgetts.errors import ConfigError

    total = model.config.num_hidden_layers
    if not 1 <= n_layers <= total:
        raise ConfigError(f"n_layers={n_layers!r} is invalid: this model has layers 1..{total}")
    model.model.layers = model.model.layers[:n_layers]
    model.config.num_hidden_layers = n_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n_layers]

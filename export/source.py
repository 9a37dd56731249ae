"""Where an export reads from: a local Hugging Face folder (or a hub id when online), one tensor at a time.

Tensor names and shapes come from the safetensors headers, so a plan can be made before any
weight is read; `load` then reads a single tensor. A model is never held in memory twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgetts.errors import ModelNotFoundError, UnsupportedModelError

# What an export needs from a hub repository (weights, config, tokenizer), nothing else.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def resolve_model(model: str | Path) -> Path:
    """A local folder as is; a hub id ("org/name") is downloaded when the machine is online."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(model).count("/") != 1 or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(
            f"{model} is not a local Hugging Face folder (config.json + safetensors); pass such a folder, "
            "or a hub id like Qwen/Qwen2.5-0.5B-Instruct on a machine that is online"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated: all say the same to the user
        raise ModelNotFoundError(f"could not fetch {model} from the Hugging Face hub ({exc}); "
                                 "download it yourself and pass the local folder") from exc


class Checkpoint:
    """A Hugging Face checkpoint folder: its config and its tensors, read lazily."""

    def __init__(self, folder: Path):
        self.folder = folder
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise ModelNotFoundError(f"{folder} has no config.json; pass a Hugging Face model folder")
        self.config: dict = json.loads(config_path.read_text(encoding="utf-8"))
        self._files = sorted(folder.glob("*.safetensors"))
        self._bin = [] if self._files else sorted(folder.glob("pytorch_model*.bin"))
        if not self._files and not self._bin:
            raise ModelNotFoundError(f"{folder} holds no weights (*.safetensors or pytorch_model*.bin)")
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        self._index()

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "?")

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._files or self._bin)

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def load(self, name: str) -> np.ndarray:
        """One tensor as float32 numpy (bf16/f16 sources are widened here, one tensor at a time)."""
        if not self._files:
            return self._bin_state(self._where[name])[name].float().numpy()
        from safetensors import safe_open

        # numpy reads every dtype but bf16 without torch, so exporting the built-in models needs no torch.
        framework = "pt" if self._dtypes[name] == "BF16" else "numpy"
        with safe_open(self._where[name], framework=framework) as f:
            tensor = f.get_tensor(name)
        return tensor.float().numpy() if framework == "pt" else tensor.astype(np.float32, copy=False)

    def tensors(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        yield from self._shapes.items()

    # ------------------------------------------------------------------------------------
    def _index(self) -> None:
        if self._files:
            from safetensors import safe_open

            for path in self._files:
                with safe_open(path, framework="numpy") as f:
                    for name in f.keys():
                        self._where[name] = path
                        self._shapes[name] = tuple(f.get_slice(name).get_shape())
                        self._dtypes[name] = f.get_slice(name).get_dtype()
            return
        for path in self._bin:
            for name, tensor in self._bin_state(path).items():
                self._where[name] = path
                self._shapes[name] = tuple(tensor.shape)

    _bin_cache: tuple[Path, dict] | None = None

    def _bin_state(self, path: Path) -> dict:
        """A .bin shard, memory-mapped (weights_only: a pickle must never run code)."""
        if self._bin_cache is None or self._bin_cache[0] != path:
            import torch

            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise UnsupportedModelError(f"{path.name} could not be read safely ({exc}); "
                                            "convert the checkpoint to safetensors") from exc
            self._bin_cache = (path, state)
        return self._bin_cache[1]

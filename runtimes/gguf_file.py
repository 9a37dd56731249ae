"""Read and check a GGUF file's header in pure Python, before llama.cpp is allowed to touch it.

llama.cpp on a bad file can abort the whole process; here a bad magic, an unknown version or a
truncated file becomes an `InvalidArtifactError` that says what is wrong. Scalar metadata and
the tensor table are returned (array values such as the vocabulary are skipped, not decoded).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from edgetts.errors import InvalidArtifactError, ModelNotFoundError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# GGUF value types: id -> struct format for scalars; 8 = string, 9 = array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # ggml order: fastest-varying dimension first
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict = field(default_factory=dict)  # scalars and strings only
    tensors: list[TensorEntry] = field(default_factory=list)
    data_offset: int = 0

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def get(self, key: str, default=None):
        """An architecture-scoped key without the prefix: get("block_count")."""
        return self.metadata.get(f"{self.arch}.{key}", default)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(1, sum(t.n_elements for t in self.tensors))


def read_header(path: str | Path) -> GGUFHeader:
    """Parse and validate `path`; raise InvalidArtifactError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist; pass a .gguf file (make one with `edgetts export`)")
    size = path.stat().st_size
    with path.open("rb") as f:
        reader = _Reader(f, path)
        try:
            header = _parse(reader, path)
        except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise InvalidArtifactError(f"{path.name} has a damaged GGUF header ({exc}); re-export or re-download it") from exc
    end = header.data_offset + max((t.offset + t.nbytes for t in header.tensors), default=0)
    if end > size:
        raise InvalidArtifactError(
            f"{path.name} is truncated: its tensors need {end:,} bytes but the file has {size:,}; "
            "the download or export was interrupted, make it again"
        )
    return header


def _parse(r: _Reader, path: Path) -> GGUFHeader:
    magic = r.read(4)
    if magic != MAGIC:
        raise InvalidArtifactError(f"{path.name} is not a GGUF file (starts with {magic!r}, expected b'GGUF'); "
                                   "pass a .gguf made by `edgetts export` or llama.cpp")
    version = r.unpack("I")
    if version not in VERSIONS:
        raise InvalidArtifactError(f"{path.name} is GGUF version {version}; this llama.cpp reads versions "
                                   f"{VERSIONS}: re-export it with `edgetts export`")
    n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
    header = GGUFHeader(path, version)
    for _ in range(n_kv):
        key = r.string()
        value = r.value(r.unpack("I"))
        if value is not _SKIPPED:
            header.metadata[key] = value
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    for _ in range(n_tensors):
        name = r.string()
        shape = tuple(r.unpack("Q") for _ in range(r.unpack("I")))
        ggml_type, offset = r.unpack("I"), r.unpack("Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise InvalidArtifactError(f"{path.name}: tensor {name} has unknown type {ggml_type}; "
                                       "update llama-cpp-python or re-export the model") from None
        n = 1
        for d in shape:
            n *= d
        header.tensors.append(TensorEntry(name, shape, ggml_type, offset, n // block * type_size))
    align = int(header.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    header.data_offset = -(-r.tell() // align) * align
    return header


_SKIPPED = object()


class _Reader:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise InvalidArtifactError(f"{self.path.name} is truncated inside its header; re-export it")
        return data

    def tell(self) -> int:
        return self.f.tell()

    def unpack(self, fmt: str):
        fmt = "<" + fmt
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        if n > 1 << 30:
            raise InvalidArtifactError(f"{self.path.name} has a damaged header (a {n:,}-byte string); re-export it")
        return self.read(n).decode("utf-8")

    def value(self, vtype: int):
        if vtype in SCALARS:
            return self.unpack(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            item, count = self.unpack("I"), self.unpack("Q")
            if item in SCALARS:  # fixed-size items: jump over them in one seek
                self.f.seek(struct.calcsize("<" + SCALARS[item]) * count, 1)
            elif item == STRING:  # the vocabulary: skip each string without decoding it
                for _ in range(count):
                    self.f.seek(self.unpack("Q"), 1)
            else:
                for _ in range(count):
                    self.value(item)
            return _SKIPPED
        raise InvalidArtifactError(f"{self.path.name} has an unknown metadata type {vtype}; re-export it")

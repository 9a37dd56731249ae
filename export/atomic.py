"""Write to a temporary path beside the destination, rename into place only on success."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgetts.errors import ConfigError


@contextmanager
def atomic_output(dest: str | Path, is_dir: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `dest` in one rename.

    On any exception (Ctrl-C included) the temporary path is removed and `dest` is untouched.
    """
    dest = Path(dest).absolute()
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest} already exists; pass --overwrite to replace it or choose another --out")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    target = tmp if is_dir else tmp / dest.name
    try:
        yield target
        _replace(target, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file (a profile, a calibration, a cache entry) through a sibling `.tmp`
    and one rename, so a reader never sees it half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _replace(src: Path, dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        # Directories cannot be swapped atomically: move the old one aside first, drop it after.
        old = dest.with_name(f".{dest.name}.old")
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)

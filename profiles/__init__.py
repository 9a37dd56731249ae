"""Device profiles shipped as data (TOML): measured latency figures for reference devices.

User-measured profiles live in the user's cache directory; these are the reference ones.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def shipped() -> dict[str, Path]:
    """Name -> path of every profile shipped with edgetts."""
    return {p.stem: p for p in sorted(HERE.glob("*.toml"))}

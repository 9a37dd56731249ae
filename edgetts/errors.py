"""Errors users see. Every message says what went wrong and how to fix it.

The CLI prints these without a traceback; set EDGETTS_DEBUG=1 to see it.
"""

from __future__ import annotations


class EdgettsError(Exception):
    """Base class: something the user can fix; the message says how."""


class ConfigError(EdgettsError, ValueError):
    """A bad option, argument or configuration value."""


class ModelNotFoundError(EdgettsError, FileNotFoundError):
    """The model path does not exist or holds nothing edgetts can load."""


class UnsupportedModelError(EdgettsError):
    """The artifact or architecture is not one edgetts supports."""


class RuntimeUnavailableError(EdgettsError, ImportError):
    """The engine's Python package is not installed or failed to import."""


class InvalidArtifactError(EdgettsError):
    """A model file is corrupt, truncated or of the wrong format."""


class SequenceError(EdgettsError, KeyError):
    """A sequence id is unknown, already in use, or out of range."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ContextOverflowError(EdgettsError):
    """A sequence would grow past the engine's context length."""


def choice_error(kind: str, got: object, valid) -> ConfigError:
    """A ConfigError for an unknown name that lists the valid ones."""
    options = ", ".join(sorted(valid))
    return ConfigError(f"unknown {kind} {got!r}; valid {kind}s: {options}")

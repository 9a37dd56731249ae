"""Tokenizers behind one interface: encode/decode, special tokens, chat template."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

from edgetts.errors import ConfigError, ModelNotFoundError


class Tokenizer(ABC):
    """What decoding needs from a tokenizer. Engines may wrap their runtime's own tokenizer."""

    bos_id: int | None = None
    eos_ids: frozenset[int] = frozenset()
    chat_template: str | None = None

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, add_special: bool = True) -> list[int]: ...

    @abstractmethod
    def decode(self, ids, skip_special: bool = True) -> str: ...

    def token_text(self, token_id: int) -> str:
        """The text of one token, for streaming and debugging."""
        return self.decode([token_id], skip_special=False)

    @property
    def bos_text(self) -> str:
        return "" if self.bos_id is None else self.decode([self.bos_id], skip_special=False)

    @property
    def eos_text(self) -> str:
        first = min(self.eos_ids, default=None)
        return "" if first is None else self.decode([first], skip_special=False)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render `messages` ([{"role", "content"}]) with the model's own Jinja chat template."""
        if not self.chat_template:
            raise ConfigError("this model has no chat template; pass the raw prompt instead (--no-chat)")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        return env.from_string(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_text,
            eos_token=self.eos_text,
        )


def _raise_template_error(message: str):
    raise ConfigError(f"the model's chat template refused the messages: {message}")


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer (tokenizer.json) with its tokenizer_config.json."""

    def __init__(self, tok, bos_token: str | None = None, eos_tokens=(), chat_template: str | None = None):
        self._tok = tok
        self.bos_id = self._id_of(bos_token)
        self.eos_ids = frozenset(i for i in map(self._id_of, eos_tokens) if i is not None)
        self.chat_template = chat_template

    @classmethod
    def from_dir(cls, folder: str | Path) -> HFTokenizer:
        from tokenizers import Tokenizer as RawTokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelNotFoundError(
                f"no tokenizer.json in {folder}; export the model with its tokenizer "
                "(a Hugging Face folder saved with tokenizer.save_pretrained)"
            )
        raw = RawTokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        eos = [_token_content(config.get("eos_token"))]
        eos += [raw.id_to_token(int(i)) for i in _as_list(generation.get("eos_token_id"))]
        return cls(
            raw,
            bos_token=_token_content(config.get("bos_token")),
            eos_tokens=[e for e in eos if e],
            chat_template=_template_of(config, folder),
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids, skip_special: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(token) -> str | None:
    """tokenizer_config stores special tokens as strings or as {"content": ...} objects."""
    return token.get("content") if isinstance(token, dict) else token


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def _template_of(config: dict, folder: Path) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template

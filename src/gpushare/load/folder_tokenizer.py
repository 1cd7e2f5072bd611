"""A model folder's tokenizer read with the `tokenizers` library and its chat template with
Jinja, without importing transformers: that import cost every run about 9 s of CPU on two
cores, more than a short run's whole load. The ids are the ones transformers' fast tokenizer
gives (it wraps the same Rust tokenizer), and the special ids are the ones its config names.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer as RustTokenizer

NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LISTED_SPECIAL = ("additional_special_tokens", "extra_special_tokens")


def readable(folder: Path) -> bool:
    """Whether `FolderTokenizer` can read this folder (else transformers loads it)."""
    return (folder / "tokenizer.json").is_file()


def _content(token: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken's dict."""
    if isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        return token["content"]
    return None


class FolderTokenizer:
    """The `Tokenizer` protocol over tokenizer.json, tokenizer_config.json and the chat template."""

    def __init__(self, backend: RustTokenizer, config: dict[str, Any], chat_template: str | None):
        self.backend_tokenizer = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=False)
        self._specials = {name: text for name in NAMED_SPECIAL if (text := _content(config.get(name))) is not None}
        listed = [text for key in LISTED_SPECIAL for token in (config.get(key) or [])
                  if (text := _content(token)) is not None]
        ids = (backend.token_to_id(text) for text in [*self._specials.values(), *listed])
        self.all_special_ids = list(dict.fromkeys(i for i in ids if i is not None))
        self.chat_template = chat_template

    @classmethod
    def load(cls, folder: Path) -> "FolderTokenizer":
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(RustTokenizer.from_file(str(folder / "tokenizer.json")), config, template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def batch_decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        return self.backend_tokenizer.decode_batch([list(s) for s in sequences], skip_special_tokens=False)

    def __call__(self, text: list[str], add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
        encoded = self.backend_tokenizer.encode_batch(text, add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def apply_chat_template(self, conversation: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False, **kwargs: Any) -> Any:
        """The template rendered as transformers renders it (a sandbox that trims blocks, with
        loop controls, `raise_exception` and `strftime_now`); ValueError without a template."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        text = _environment().from_string(self.chat_template).render(
            messages=conversation, add_generation_prompt=add_generation_prompt, **self._specials, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def _environment() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env

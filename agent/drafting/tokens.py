"""Counting a prompt's tokens, so it fits the model's context window.

With the served model's own tokenizer (`DESKPILOT_LLM_TOKENIZER`: its `tokenizer.json` or a Hugging Face tokenizer
folder) the count is exact. Without it, the packaged embedding model's tokenizer gives an estimate: a WordPiece
count of the same text, never below one token per four characters (BPE tokenizers of instruct models split URLs,
ids and other languages finer than English prose; the larger of the two keeps the prompt inside the window).
Nothing is downloaded: a tokenizer that cannot be read locally leaves the characters / 4 estimate.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from knowledge.embedder import packaged_model_path

log = logging.getLogger("deskpilot.llm")

CHARS_PER_TOKEN = 4
# What a chat template adds around each message (role markers, separators).
MESSAGE_OVERHEAD = 8


@dataclass(frozen=True)
class TokenCounter:
    """`count(text)`: the text's tokens as `source` counts them; `exact` when it is the served model's tokenizer."""

    source: str
    exact: bool
    encode: Callable[[str], int] | None = None

    def count(self, text: str) -> int:
        by_chars = math.ceil(len(text) / CHARS_PER_TOKEN)
        if self.encode is None:
            return by_chars
        tokens = self.encode(text)
        return tokens if self.exact else max(tokens, by_chars)

    def count_messages(self, texts: list[str]) -> int:
        return sum(self.count(text) + MESSAGE_OVERHEAD for text in texts)


CHARS_ESTIMATE = TokenCounter("characters / 4", exact=False)


@functools.cache
def token_counter(tokenizer_path: str | None = None) -> TokenCounter:
    """The counter for the served model's tokenizer at `tokenizer_path`, else the embedding model's estimate."""
    if tokenizer_path:
        encode = _load(Path(tokenizer_path))
        if encode is not None:
            return TokenCounter(f"model tokenizer {tokenizer_path}", exact=True, encode=encode)
        log.warning("could not read the tokenizer at %s; estimating prompt tokens instead", tokenizer_path)
    encode = _load(Path(packaged_model_path()))
    if encode is None:
        return CHARS_ESTIMATE
    return TokenCounter("embedding model tokenizer (estimate)", exact=False, encode=encode)


def _load(path: Path) -> Callable[[str], int] | None:
    file = path / "tokenizer.json" if path.is_dir() else path
    if path.is_dir() and not file.exists():
        return _load_pretrained(path)
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception:  # a missing or unreadable file: the caller falls back to an estimate
        log.debug("no tokenizer at %s", file, exc_info=True)
        return None
    # A tokenizer file may carry its model's input limits (MiniLM: 128 tokens): a count must see the whole text.
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def encode(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return encode


def _load_pretrained(folder: Path) -> Callable[[str], int] | None:
    """A Hugging Face tokenizer folder without a `tokenizer.json` (a SentencePiece model, say), read locally."""
    from transformers import AutoTokenizer  # slow to import: only for this rarer layout

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:
        log.debug("no tokenizer in %s", folder, exc_info=True)
        return None

    def encode(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return encode

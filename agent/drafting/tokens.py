"""Counting a prompt's tokens, so it fits the model's context window.

With the served model's own tokenizer (`DESKPILOT_LLM_TOKENIZER`: its `tokenizer.json` or a Hugging Face tokenizer
folder) the count is exact. Without that file, a server that offers its tokenizer over HTTP counts for us
(`server_counter`: llama-server's `POST /tokenize`, `python -m llama_cpp.server`'s `POST /extras/tokenize`; the
LLM drafter looks for them once, beside its structured-output probe). Otherwise the packaged embedding model's
tokenizer gives an estimate: a WordPiece count of the same text, never below one token per four characters (BPE
tokenizers of instruct models split URLs, ids and other languages finer than English prose; the larger of the two
keeps the prompt inside the window). Nothing is downloaded: a tokenizer that cannot be read locally leaves the
characters / 4 estimate.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
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


# --- the server's own tokenizer, over HTTP ------------------------------------------------------------------

# (path under the server's root, the request's text field, the source as traces show it), in the order tried.
TOKENIZE_ENDPOINTS: tuple[tuple[str, str, str], ...] = (
    ("/tokenize", "content", "llama-server /tokenize"),
    ("/extras/tokenize", "input", "llama_cpp.server /extras/tokenize"),
)
TOKENIZE_TIMEOUT_S = 5.0
_PROBE_TEXT = "Deleted entries stay in the Trash for 30 days."
_CACHED_COUNTS = 256


def server_root(base_url: str) -> str:
    """The server's root for an OpenAI-compatible base URL: `http://host:8092/v1` -> `http://host:8092`."""
    parts = urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit(parts._replace(path=path, query="", fragment=""))


class _ServerTokenizer:
    """`count(text)` by the server's tokenize endpoint; the estimate when a call fails (never an exception: a
    prompt is still built while the server restarts). The last texts' counts are kept: the budget loop counts
    the same system message again and again."""

    def __init__(self, client: httpx.Client, path: str, field: str, fallback: TokenCounter) -> None:
        self.client = client
        self.path = path
        self.field = field
        self.fallback = fallback
        self.failures = 0
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def tokens(self, text: str) -> list[int] | None:
        try:
            response = self.client.post(self.path, json={self.field: text})
            if response.status_code != 200:
                return None
            tokens = response.json().get("tokens")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            return None
        return tokens

    def __call__(self, text: str) -> int:
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
        tokens = self.tokens(text)
        if tokens is None:
            self.failures += 1
            return self.fallback.count(text)
        with self._lock:
            self._cache[text] = len(tokens)
            while len(self._cache) > _CACHED_COUNTS:
                self._cache.popitem(last=False)
        return len(tokens)


@dataclass(frozen=True)
class ServerTokenizerProbe:
    """What looking for a tokenize endpoint found: the counter (None: none works), and whether the server
    answered at all (an unreachable server is asked again later)."""

    counter: TokenCounter | None
    reachable: bool
    results: dict[str, str]


def server_counter(
    base_url: str,
    *,
    headers: Mapping[str, str] | None = None,
    fallback: TokenCounter | None = None,
    timeout_s: float = TOKENIZE_TIMEOUT_S,
) -> ServerTokenizerProbe:
    """The served model's own tokenizer behind its HTTP API, when the server offers one: each endpoint of
    `TOKENIZE_ENDPOINTS` is tried with a short text and used when it answers a non-empty list of token ids.
    Blocking: call it from a thread in async code."""
    client = httpx.Client(base_url=server_root(base_url), headers=dict(headers or {}), timeout=timeout_s)
    results: dict[str, str] = {}
    reachable = False
    for path, field, source in TOKENIZE_ENDPOINTS:
        try:
            response = client.post(path, json={field: _PROBE_TEXT})
        except httpx.HTTPError as exc:
            results[path] = f"unreachable: {type(exc).__name__}"
            continue
        reachable = True
        try:
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            tokens = None
        if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
            results[path] = "works"
            encode = _ServerTokenizer(client, path, field, fallback or token_counter())
            return ServerTokenizerProbe(
                TokenCounter(f"server tokenizer ({source})", exact=True, encode=encode), True, results
            )
        results[path] = f"HTTP {response.status_code}" if response.status_code != 200 else "no token list"
    client.close()
    return ServerTokenizerProbe(None, reachable, results)

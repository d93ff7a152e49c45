"""Training and evaluation data of the twins: natural text mixed with in-context sequences.

* **Tokenizer**: a byte-level BPE trained on the training articles (seeded article order; the
  trainer is deterministic), with the special tokens ``<pad> <bos> <eos> <sep> <key> <q>``.
* **Natural text**: BBC news (:func:`massmech.core.corpus.bbc_news`); a held-out share of the
  articles is never trained on and gives the natural-text loss.
* **In-context sequences** (only predictable from the context):

  - ``repeat``: random token spans, each followed by ``<sep>`` and the same span again
    (scored: the second copy after its first token);
  - ``kv``: a list ``<key> k v`` of random single-token keys and values, then queries
    ``<q> k v`` (scored: each queried value);
  - ``passkey``: natural text with ``<key> d1 d2 d3 d4 <sep>`` at a random depth, ending in
    ``<q> d1 d2 d3 d4`` (scored: the four passkey tokens).

Batch ``s`` is a pure function of ``(seed, s)``, so every twin sees the same rows in the same
order and a resumed run the same rows as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from massmech.core.corpus import bbc_news
from massmech.errors import CorpusError
from massmech.studies.twins.vocabulary import KINDS, check_kinds

SPECIALS = ("<pad>", "<bos>", "<eos>", "<sep>", "<key>", "<q>")

PASSKEY_LEN = 4


def _split(seed: int, heldout_fraction: float) -> tuple[list[str], list[str]]:
    texts = bbc_news(seed=seed)
    n_held = max(1, int(round(len(texts) * heldout_fraction)))
    return texts[n_held:], texts[:n_held]


def train_tokenizer(vocab_size: int, path: Path, *, seed: int = 0, heldout_fraction: float = 0.1):
    """Train the byte-level BPE on the training articles and save it to ``path``.

    Returns:
        A ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from massmech.core.twin import fast_tokenizer

    n_min = 256 + len(SPECIALS)
    if vocab_size < n_min:
        raise CorpusError(f"vocab_size must be >= {n_min} (256 bytes + {len(SPECIALS)} special tokens), got {vocab_size}")
    train, _ = _split(seed, heldout_fraction)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(train, trainer)
    return fast_tokenizer(tk, path, pad="<pad>", bos="<bos>", eos="<eos>", extra=SPECIALS[3:])


@dataclass(frozen=True, eq=False)
class TwinCorpus:
    """Token ids of the training and held-out text, and the special-token ids.

    Attributes:
        train: Training articles, concatenated with ``<eos>`` between them.
        heldout: Held-out articles, likewise.
        special: Special token -> id.
        vocab_size: Size of the vocabulary.
    """

    train: np.ndarray
    heldout: np.ndarray
    special: dict[str, int]
    vocab_size: int
    alphabet: int | None = None

    @property
    def content_low(self) -> int:
        """Smallest id of an ordinary (non-special) token; specials come first."""
        return max(self.special.values()) + 1

    def random_tokens(self, rng: np.random.Generator, n: int, *, replace: bool = True) -> np.ndarray:
        """Random ordinary tokens: from the first ``alphabet`` of them (all if ``None``)."""
        high = self.vocab_size if self.alphabet is None else self.content_low + self.alphabet
        return rng.choice(np.arange(self.content_low, high), size=n, replace=replace)


def load_corpus(tokenizer, *, seed: int = 0, heldout_fraction: float = 0.1, alphabet: int | None = None) -> TwinCorpus:
    """Tokenize the training and held-out articles with the twins' tokenizer.

    Args:
        tokenizer: The twins' tokenizer (:func:`train_tokenizer`).
        seed: Article order (the held-out articles are the first ``heldout_fraction``).
        heldout_fraction: Share of articles never trained on.
        alphabet: In-context sequences draw their random tokens from the first ``alphabet``
            ordinary tokens (the byte tokens when <= 256); ``None``: the whole vocabulary.
    """
    corpus = _load_corpus(tokenizer, seed, heldout_fraction)
    if alphabet is not None and not 8 <= alphabet <= corpus.vocab_size - corpus.content_low:
        raise CorpusError(f"alphabet must be in [8, {corpus.vocab_size - corpus.content_low}], got {alphabet}")
    return dataclasses.replace(corpus, alphabet=alphabet)


@functools.lru_cache(maxsize=4)
def _load_corpus(tokenizer, seed: int, heldout_fraction: float) -> TwinCorpus:
    special = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in SPECIALS}
    if sorted(special.values()) != list(range(len(SPECIALS))):
        raise CorpusError(f"the twins' tokenizer must put {SPECIALS} first, got {special}")
    eos = special["<eos>"]

    def ids(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, add_special_tokens=False).input_ids
        return np.concatenate([np.asarray(e + [eos], dtype=np.int64) for e in enc])

    train, held = _split(seed, heldout_fraction)
    return TwinCorpus(train=ids(train), heldout=ids(held), special=special, vocab_size=len(tokenizer))


# --------------------------------------------------------------------------- sequences
def _natural(corpus: TwinCorpus, rng: np.random.Generator, length: int, source: np.ndarray | None = None) -> np.ndarray:
    src = corpus.train if source is None else source
    start = int(rng.integers(0, len(src) - length))
    return src[start : start + length]


def synthetic(
    kind: str, corpus: TwinCorpus, rng: np.random.Generator, length: int, *, filler: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One in-context sequence of ``length`` tokens and its mask of scored tokens.

    Args:
        kind: One of :data:`KINDS`.
        corpus: Token ids and specials.
        rng: Source of randomness.
        length: Tokens in the sequence.
        filler: Natural text the ``passkey`` needle hides in (default: the training text).

    Returns:
        ``(tokens, scored)``: int64 ``[length]`` and bool ``[length]``; ``scored[t]`` means the
        token at ``t`` is an answer that only the context predicts.
    """
    sp = corpus.special
    toks: list[int] = []
    scored: list[bool] = []

    def put(xs, score: bool | Sequence[bool] = False) -> None:
        xs = [int(x) for x in xs]
        toks.extend(xs)
        scored.extend([score] * len(xs) if isinstance(score, bool) else score)

    if kind == "repeat":
        while len(toks) < length:
            span = corpus.random_tokens(rng, int(rng.integers(4, 17)))
            put(span)
            put([sp["<sep>"]])
            put(span, [False] + [True] * (len(span) - 1))
            put([sp["<eos>"]])
    elif kind == "kv":
        while len(toks) < length:
            n = int(rng.integers(3, 9))
            keys = corpus.random_tokens(rng, n, replace=False)
            values = corpus.random_tokens(rng, n)
            for k, v in zip(keys, values, strict=True):
                put([sp["<key>"], k, v])
            for i in rng.permutation(n):
                put([sp["<q>"], keys[i]])
                put([values[i]], True)
            put([sp["<eos>"]])
    elif kind == "passkey":
        key = corpus.random_tokens(rng, PASSKEY_LEN)
        needle = [sp["<key>"], *key, sp["<sep>"]]
        n_fill = length - len(needle) - 1 - PASSKEY_LEN
        if n_fill < 1:
            raise CorpusError(f"passkey sequences need length > {len(needle) + 1 + PASSKEY_LEN}, got {length}")
        fill = _natural(corpus, rng, n_fill, filler)
        depth = int(rng.integers(0, n_fill + 1))
        put(fill[:depth])
        put(needle)
        put(fill[depth:])
        put([sp["<q>"]])
        put(key, True)
    else:
        raise CorpusError(f"unknown in-context kind {kind!r}; choose from {KINDS}")
    return np.asarray(toks[:length], dtype=np.int64), np.asarray(scored[:length], dtype=bool)


def batch(
    corpus: TwinCorpus,
    *,
    seed: int,
    step: int,
    batch_size: int,
    length: int,
    synthetic_share: float,
    kinds: Sequence[str] = KINDS,
) -> Int[Tensor, "batch length"]:
    """Training batch ``step``: each row natural text, or (with probability ``synthetic_share``)
    an in-context sequence of a uniformly drawn kind."""
    rng = np.random.default_rng([seed, step])
    rows = []
    for _ in range(batch_size):
        if kinds and rng.random() < synthetic_share:
            rows.append(synthetic(kinds[int(rng.integers(len(kinds)))], corpus, rng, length)[0])
        else:
            rows.append(_natural(corpus, rng, length))
    return torch.from_numpy(np.stack(rows))


def eval_set(
    corpus: TwinCorpus, kind: str, *, n: int, length: int, seed: int
) -> tuple[Int[Tensor, "n length"], Bool[Tensor, "n length"]]:
    """Held-out evaluation rows: ``kind`` in :data:`KINDS` (passkeys hidden in held-out text) or
    ``"natural"`` (consecutive held-out windows, every token after the first scored)."""
    if kind == "natural":
        need = n * length
        if need > len(corpus.heldout):
            raise CorpusError(f"the held-out text has {len(corpus.heldout)} tokens; {n} windows of {length} need {need}")
        toks = torch.from_numpy(corpus.heldout[:need].reshape(n, length).copy())
        mask = torch.ones_like(toks, dtype=torch.bool)
        mask[:, 0] = False
        return toks, mask
    check_kinds([kind])
    rng = np.random.default_rng([seed, 10**9 + KINDS.index(kind)])  # disjoint from training steps
    pairs = [synthetic(kind, corpus, rng, length, filler=corpus.heldout) for _ in range(n)]
    return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))

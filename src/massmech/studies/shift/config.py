"""The position-shift study's config and its presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from massmech.core.catalog import DEFAULT_MODEL
from massmech.errors import ConfigError


@dataclass(frozen=True)
class ShiftConfig:
    """Texts moved later by a prefix of unrelated text (see :mod:`massmech.core.shift`).

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        n_texts: BBC news articles whose first ``seq_len`` tokens are the texts.
        seq_len: Tokens per text (after the tokenizer's leading special tokens).
        shifts: Prefix lengths: each moves the texts that many positions later.
        skip: Leading text tokens left out of the measures (the unshifted text's first token is
            the attention sink when the model has no BOS token).
        batch_size: Texts per forward pass.
        seed: Order of the articles (the prefix is the first article after the texts).
    """

    model: str = DEFAULT_MODEL
    n_texts: int = 32
    seq_len: int = 128
    shifts: tuple[int, ...] = (16, 64, 256)
    skip: int = 1
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shifts", tuple(int(s) for s in self.shifts))
        if self.n_texts < 2 or self.seq_len < self.skip + 2 or self.batch_size < 1 or self.skip < 0:
            raise ConfigError(f"need n_texts >= 2, seq_len >= skip + 2, batch_size >= 1 and skip >= 0; got "
                              f"{self.n_texts}, {self.seq_len}, {self.batch_size}, {self.skip}")
        if not self.shifts or min(self.shifts) < 1 or len(set(self.shifts)) != len(self.shifts):
            raise ConfigError(f"shifts must be distinct and >= 1, got {self.shifts}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShiftConfig:
        return cls(**json.loads(text))


def preset(name: str, **overrides) -> ShiftConfig:
    """``default`` (32 texts) or ``ledger`` (64 texts, what the claim ledger reads).

    >>> preset("ledger", model="tiny-llama").n_texts
    64
    """
    base = {"default": {}, "ledger": {"n_texts": 64}}
    if name not in base:
        raise ConfigError(f"unknown shift preset {name!r}; presets are {', '.join(base)}")
    return ShiftConfig(**(base[name] | overrides))


def quick(config: ShiftConfig) -> ShiftConfig:
    """The ``massmech reproduce --quick`` version: 4 texts, the two shortest shifts.

    >>> quick(preset("ledger")).n_texts, quick(preset("ledger")).shifts
    (4, (16, 64))
    """
    return replace(config, n_texts=min(config.n_texts, 4), shifts=tuple(sorted(config.shifts)[:2]))

"""The retrieval-heads study's config and its presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from massmech.core.catalog import DEFAULT_MODEL
from massmech.errors import ConfigError


@dataclass(frozen=True)
class HeadsConfig:
    """Heads ranked on some examples, then disrupted on others (see :mod:`massmech.studies.heads.study`).

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        tasks: Tasks whose answer stands in the prompt (the needle).
        n: Examples each condition is scored on (seed ``seed``).
        seed: Seed of those examples and of the control draws.
        n_rank: Examples the heads are ranked on (seed ``rank_seed``; any equal to a scored
            example's prompt is dropped from the scored ones).
        rank_seed: Seed of the ranking examples.
        top: Heads disrupted in each arm.
        draws: Seeded draws of ``top`` other eligible heads (the control).
        lam: Lambda of the massive rule (ranking, eligibility and the disruption).
        batch_size: Sequences per forward pass.
    """

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = ("passkey", "kv_lookup")
    n: int = 100
    seed: int = 0
    n_rank: int = 20
    rank_seed: int = 1
    top: int = 8
    draws: int = 5
    lam: float = 5.0
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks or min(self.n, self.n_rank, self.top, self.draws, self.batch_size) < 1 or not self.lam > 0:
            raise ConfigError("need tasks, n, n_rank, top, draws and batch_size >= 1 and lam > 0; got "
                              f"{self.tasks}, {self.n}, {self.n_rank}, {self.top}, {self.draws}, {self.batch_size}, {self.lam}")
        if self.seed == self.rank_seed:
            raise ConfigError(f"seed and rank_seed are both {self.seed}: heads would be ranked on the examples they are "
                              "tested on")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HeadsConfig:
        return cls(**json.loads(text))


def preset(name: str, **overrides) -> HeadsConfig:
    """``default`` (100 examples) or ``ledger`` (200, what the claim ledger reads).

    >>> preset("ledger", model="tiny-llama").n
    200
    """
    base = {"default": {}, "ledger": {"n": 200}}
    if name not in base:
        raise ConfigError(f"unknown heads preset {name!r}; presets are {', '.join(base)}")
    return HeadsConfig(**(base[name] | overrides))


def quick(config: HeadsConfig) -> HeadsConfig:
    """The ``massmech reproduce --quick`` version: 8 examples, 4 to rank on, the top 4 heads, 2 draws.

    >>> quick(preset("ledger")).n, quick(preset("ledger")).top, quick(preset("ledger")).draws
    (8, 4, 2)
    """
    return replace(config, n=min(config.n, 8), n_rank=min(config.n_rank, 4), top=min(config.top, 4),
                   draws=min(config.draws, 2))

"""The band-attribution study's config and its presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from massmech.core.catalog import DEFAULT_MODEL
from massmech.errors import ConfigError


@dataclass(frozen=True)
class AttributeConfig:
    """Attention logits at the answer position, split by RoPE pair (see :mod:`massmech.causal.retrieval`).

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        tasks: Tasks whose answer stands in the prompt (the needle): passkey, kv_lookup, or yours.
        n: Examples per task.
        seed: Seed of the examples.
        lam: Lambda of the massive rule that names each head's massive pairs.
        layers: Layers to split (empty: every layer).
    """

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = ("passkey", "kv_lookup")
    n: int = 20
    seed: int = 0
    lam: float = 5.0
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "layers", tuple(sorted({int(x) for x in self.layers})))
        if not self.tasks or self.n < 1 or not self.lam > 0 or (self.layers and min(self.layers) < 0):
            raise ConfigError(f"need tasks, n >= 1, lam > 0 and layers >= 0; got {self.tasks}, {self.n}, {self.lam}, "
                              f"{self.layers}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AttributeConfig:
        return cls(**json.loads(text))


def preset(name: str, **overrides) -> AttributeConfig:
    """``default`` (20 examples per task) or ``ledger`` (50, the gallery's heat maps).

    >>> preset("ledger", model="tiny-llama").n
    50
    """
    base = {"default": {}, "ledger": {"n": 50}}
    if name not in base:
        raise ConfigError(f"unknown attribute preset {name!r}; presets are {', '.join(base)}")
    return AttributeConfig(**(base[name] | overrides))


def quick(config: AttributeConfig) -> AttributeConfig:
    """The ``massmech reproduce --quick`` version: 4 examples per task.

    >>> quick(preset("ledger")).n
    4
    """
    return replace(config, n=min(config.n, 4))

"""The twins' configuration: a :class:`TwinsConfig` (architecture, data, optimiser, checkpoint steps), its :class:`Variant` runs and the presets.

The three twins are ``rope``, ``absolute`` and ``nope`` at the config's context and RoPE base;
for the wavelength question, RoPE runs at another context or base. Variants at another context
keep the tokens per step (``batch_size * context``) fixed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from massmech.core.positions import MECHANISMS, check_mechanism
from massmech.errors import TwinError
from massmech.studies.twins.vocabulary import KINDS, check_kinds


@dataclass(frozen=True)
class Variant:
    """One training run of a twins study.

    Attributes:
        mechanism: ``rope``, ``absolute`` or ``nope``.
        context: Training context (``None``: the config's).
        rope_theta: RoPE base (``None``: the config's; only for ``rope``).
        seed: Seed of the initial weights and data order (``None``: the config's). Replicas of
            the twins with other seeds share their own initial weights, as the twins do.
    """

    mechanism: str
    context: int | None = None
    rope_theta: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        check_mechanism(self.mechanism)
        if self.rope_theta is not None and self.mechanism != "rope":
            raise TwinError(f"rope_theta is only for the rope mechanism, not {self.mechanism!r}")

    @property
    def name(self) -> str:
        parts = [self.mechanism]
        if self.context is not None:
            parts.append(f"ctx{self.context}")
        if self.rope_theta is not None:
            parts.append(f"theta{self.rope_theta:g}")
        if self.seed is not None:
            parts.append(f"seed{self.seed}")
        return "-".join(parts)

    @property
    def is_twin(self) -> bool:
        """One of the three twins proper (default context and base), at the config's seed or another."""
        return self.context is None and self.rope_theta is None


TWINS = tuple(Variant(m) for m in MECHANISMS)


@dataclass(frozen=True)
class TwinsConfig:
    """Everything that defines a twins study (serialises to JSON).

    Attributes:
        preset: Name of the preset it came from (``custom`` otherwise).
        d_model, n_layers, n_heads, d_mlp: Architecture (d_head = d_model / n_heads).
        context: Training context of the twins.
        batch_size: Rows per step at ``context``.
        steps: Optimiser steps.
        lr, min_lr_ratio, warmup: AdamW learning rate, linear warm-up then cosine decay to
            ``min_lr_ratio * lr``.
        weight_decay, grad_clip: AdamW weight decay, gradient-norm clip.
        vocab_size: Byte-level BPE vocabulary.
        synthetic_share: Share of rows that are in-context sequences.
        alphabet: Random tokens of the in-context sequences come from the first ``alphabet``
            ordinary tokens (``None``: the whole vocabulary).
        kinds: In-context kinds mixed in.
        rope_theta: RoPE base of the rope twin.
        variants: The runs (the three twins first).
        checkpoints: Steps at which weights are saved (step 0 = the shared initial weights).
        seed: Initial weights, data order, evaluation sets.
        seeds: Further seeds: the three twins are trained again with each (variants
            ``rope-seed1`` ...; same evaluation sets), for intervals over seeds.
        heldout_fraction: Share of articles never trained on.
        max_epochs: Natural-text tokens drawn may be at most this many passes over the corpus.
        analysis_tokens: Held-out tokens the Q/K/V statistics are captured over.
        eval_examples: In-context evaluation sequences per kind.
        lam: Lambda of the massive-value rule.
        disrupt_k: Dims per head replaced in the disruption test (top-k by M, and as many random).
        precision: Training arithmetic: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere),
            ``bf16`` (autocast on any device) or ``fp32``. Weights, optimiser state and the
            loss stay fp32; checkpoints resume in the same precision.
    """

    preset: str = "custom"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_mlp: int = 256
    context: int = 128
    batch_size: int = 16
    steps: int = 3000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    vocab_size: int = 2048
    synthetic_share: float = 0.6
    alphabet: int | None = 64
    kinds: tuple[str, ...] = KINDS
    rope_theta: float = 10_000.0
    variants: tuple[Variant, ...] = TWINS
    checkpoints: tuple[int, ...] = (0, 50, 250, 500, 1000, 1500, 2000, 3000)
    seed: int = 0
    seeds: tuple[int, ...] = ()
    heldout_fraction: float = 0.1
    max_epochs: float = 4.0
    analysis_tokens: int = 8192
    eval_examples: int = 64
    lam: float = 5.0
    disrupt_k: int = 2
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise TwinError(f"precision must be auto, bf16 or fp32; got {self.precision!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(
            self, "variants", tuple(v if isinstance(v, Variant) else Variant(**v) for v in self.variants)
        )
        object.__setattr__(self, "checkpoints", tuple(sorted({int(s) for s in self.checkpoints} | {self.steps})))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if self.seed in self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise TwinError(f"seeds {self.seeds} must be distinct and differ from seed={self.seed}")
        replicas = tuple(Variant(v.mechanism, seed=s) for s in self.seeds for v in TWINS)
        object.__setattr__(self, "variants", self.variants + tuple(r for r in replicas if r not in self.variants))
        check_kinds(self.kinds)
        for name in ("d_model", "n_layers", "n_heads", "d_mlp", "context", "batch_size", "steps", "vocab_size", "eval_examples", "disrupt_k"):
            if getattr(self, name) < 1:
                raise TwinError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.synthetic_share <= 1:
            raise TwinError(f"synthetic_share must be in [0, 1], got {self.synthetic_share}")
        if self.synthetic_share > 0 and not self.kinds:
            raise TwinError("synthetic_share > 0 needs at least one in-context kind")
        if min(self.checkpoints) < 0 or max(self.checkpoints) > self.steps:
            raise TwinError(f"checkpoints must lie in [0, steps={self.steps}], got {self.checkpoints}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise TwinError(f"variants repeat: {names}")
        if not set(TWINS) <= set(self.variants):
            raise TwinError(f"the variants must include the three twins {[v.name for v in TWINS]}")
        for v in self.variants:
            if self.batch_size * self.context % self.context_of(v):
                raise TwinError(f"variant {v.name}: batch_size * context must be divisible by its context")
        if self.disrupt_k > self.d_model // self.n_heads:
            raise TwinError(f"disrupt_k {self.disrupt_k} exceeds d_head {self.d_model // self.n_heads}")

    # ------------------------------------------------------------------ variants
    def context_of(self, v: Variant) -> int:
        return v.context or self.context

    def batch_of(self, v: Variant) -> int:
        """Rows per step: tokens per step stay ``batch_size * context``."""
        return max(1, self.batch_size * self.context // self.context_of(v))

    def theta_of(self, v: Variant) -> float:
        return v.rope_theta or self.rope_theta

    def seed_of(self, v: Variant) -> int:
        return self.seed if v.seed is None else v.seed

    @property
    def max_context(self) -> int:
        return max(self.context_of(v) for v in self.variants)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise TwinError(f"no variant {name!r}; the config has {[v.name for v in self.variants]}")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> TwinsConfig:
        d = dict(d)
        d["variants"] = tuple(Variant(**v) for v in d.get("variants", ()))
        d["kinds"] = tuple(d.get("kinds", KINDS))
        d["checkpoints"] = tuple(d.get("checkpoints", ()))
        d["seeds"] = tuple(d.get("seeds", ()))
        return cls(**d)

    def replace(self, **changes: Any) -> TwinsConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TwinsConfig] = {
    # Inside the test suite: the three twins, 300 steps at context 64 (about 35 s on one core).
    # In-context skill cannot form in 300 steps, so 70% of the rows are natural text (which is
    # what the Q/K concentration is learned from) and random tokens span the whole vocabulary.
    "tiny": TwinsConfig(
        preset="tiny", context=64, steps=300, warmup=20, vocab_size=512, checkpoints=(0, 100, 300),
        synthetic_share=0.3, alphabet=None, analysis_tokens=2048, eval_examples=32,
    ),
    # About 15 minutes on 2 CPU cores: the three twins plus RoPE at 4x the context and at a 10x
    # smaller base (the wavelength question). 3,000 steps of 16 x 128 tokens: in-context
    # copying forms between steps 1,000 and 1,500 at this size.
    "demo": TwinsConfig(
        preset="demo",
        variants=(*TWINS, Variant("rope", context=512), Variant("rope", rope_theta=1_000.0)),
    ),
    # Sized for one GPU: d_head 64, 8 layers, context 1024, 33M tokens (the corpus is reused
    # for several epochs, see max_epochs).
    "paper": TwinsConfig(
        preset="paper", d_model=512, n_layers=8, n_heads=8, d_mlp=2048, context=1024, batch_size=16,
        steps=2000, lr=1e-3, warmup=200, vocab_size=8192, max_epochs=30.0,
        variants=(*TWINS, Variant("rope", context=256), Variant("rope", rope_theta=1_000_000.0)),
        checkpoints=(0, 50, 250, 500, 1000, 1500, 2000), analysis_tokens=32768, eval_examples=256,
        disrupt_k=4,
    ),
}


def preset(name: str) -> TwinsConfig:
    """A named preset: ``tiny``, ``demo`` or ``paper``."""
    if name not in PRESETS:
        raise TwinError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def build(name: str, **overrides: Any) -> TwinsConfig:
    """Preset ``name`` with fields replaced (the registry's builder; ``massmech twins --preset``).

    A shorter run (``steps``) keeps the preset's checkpoints it reaches, unless ``checkpoints`` is given.

    >>> build("demo", steps=500).checkpoints
    (0, 50, 250, 500)
    """
    base = preset(name)
    if "steps" in overrides and "checkpoints" not in overrides:
        overrides["checkpoints"] = tuple(s for s in base.checkpoints if s <= overrides["steps"])
    return dataclasses.replace(base, **overrides)


def quick(config: TwinsConfig) -> TwinsConfig:
    """The ``massmech reproduce --quick`` version: the tiny preset's sizes and at most one further seed.

    >>> quick(build("demo", seeds=(1, 2))).steps, quick(build("demo", seeds=(1, 2))).seeds
    (300, (1,))
    """
    return dataclasses.replace(PRESETS["tiny"], seeds=config.seeds[:1])

"""The quantization study's configuration: methods, bit widths, grids, :class:`QuantSpec` and :class:`QuantStudyConfig`.

=====================  ===========  ====================================================
method                 bits         what it does
=====================  ===========  ====================================================
``none``               -            the model as loaded (the reference row)
``rtn``                4, 8         symmetric round-to-nearest, per row or per group
``gptq``               4, 8         GPTQ through llmcompressor (``massmech[quant]``)
``awq``                4            activation-aware scales (:func:`massmech.studies.quant.smoothing.awq`) + RTN
``smoothquant``        8            SmoothQuant scales, then int8 per-row weights and
                                    per-tensor dynamic int8 activations
``w8a8-naive``         8            the same W8A8 without smoothing (outlier-blind)
``gguf-q8_0`` ...      fixed        llama.cpp Q8_0 / Q5_0 / Q4_1 / Q4_0 round trips
``kv-per-token``       2, 4, 8      post-RoPE K and V min-max per token
``kv-per-channel``     2, 4, 8      K per channel (KIVI), V per token
``kv-massive-aware``   2, 4, 8      K per token with the massive K dims kept in fp16
``qk-rtn``             4, 8         RTN on W_q and W_k only (everything else exact)
``qk-rtn-keep-massive`` 4, 8        the same, with the rows of W_q/W_k that produce the
                                    massive pre-RoPE Q/K dims kept exact (fp16)
``qk-rtn-keep-random`` 4, 8         the same number of other rows per head kept exact:
                                    equal bits, the control of the row above
=====================  ===========  ====================================================

Which outliers a method protects: AWQ and SmoothQuant rescale the *activations entering* linear
layers (the norm outputs feeding q/k/v and gate/up, and v -> o, up -> down where the shapes allow;
on Gemma-3 AWQ leaves q/k/v/o alone, so its Q/K weights are RTN's, see
:func:`massmech.studies.quant.smoothing.block_maps`); per-channel and massive-aware KV protect
the cached K channels; only ``qk-rtn-keep-massive`` protects the weights that *make* the Q/K
massive values, and ``qk-rtn-keep-random`` tells whether that protection matters more than
protecting any rows at equal bits.

The ``qk-*`` variants also take a part of the model and a draw (issue 26, item 6: one rounding
and one draw of rows is not a result): ``sites`` (``"qk"``, ``"q"`` or ``"k"``: which of W_q and
W_k are quantized), ``layers`` (``"all"``, or ``"local"``/``"global"``: Gemma-3's sliding-window
and full-attention layers) and ``draw`` (0: round to nearest, the other rows drawn with the study's
seed; ``d >= 1``: stochastic rounding, unbiased, seeded by ``d``, and another draw of the random
rows; the same ``d`` gives every method the same rounding noise, so arms pair by draw).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from massmech.causal.tasks.builtin import TASKS, is_task_name
from massmech.causal.vocabulary import QUICK_NEW_TOKENS, SCORERS
from massmech.core.catalog import DEFAULT_MODEL
from massmech.errors import QuantError

KV_BITS = (2, 4, 8)  # the KV-cache quantizer's widths (massmech.studies.quant.kv)
# the GGUF weight formats (massmech.studies.quant.methods): method name -> gguf's quantization type
GGUF_FORMATS = {"gguf-q8_0": "Q8_0", "gguf-q5_0": "Q5_0", "gguf-q4_1": "Q4_1", "gguf-q4_0": "Q4_0"}

KV_METHODS = ("kv-per-token", "kv-per-channel", "kv-massive-aware")
QK_METHODS = ("qk-rtn", "qk-rtn-keep-massive", "qk-rtn-keep-random")
METHODS = ("none", "rtn", "gptq", "awq", "smoothquant", "w8a8-naive", *GGUF_FORMATS, *KV_METHODS, *QK_METHODS)
BITS = ({"rtn": (4, 8), "gptq": (4, 8), "awq": (4,), "smoothquant": (8,), "w8a8-naive": (8,)}
        | dict.fromkeys(KV_METHODS, KV_BITS) | dict.fromkeys(QK_METHODS, (4, 8)))
DEFAULT_BITS = ({"rtn": 4, "gptq": 4, "awq": 4, "smoothquant": 8, "w8a8-naive": 8} | dict.fromkeys(KV_METHODS, 4)
                | dict.fromkeys(QK_METHODS, 4))
GROUPED = ("rtn", "gptq", "awq", *QK_METHODS)  # methods with a group size
DEFAULT_GROUP = 64  # divides SmolLM2's 576/1536 and Gemma-3's 640/2048 widths
DEFAULT_TASKS = ("country_capital", "city_country", "passkey", "kv_lookup", "knowledge_conflict")
CACHE_VERSION = 1
# The study's grids (analyses/quant_study.py, paper_figures/fig_quant_*.py): (method, bits, group size)
WEIGHT_GRID = (("rtn", 8, None), ("rtn", 4, 64), ("gptq", 4, 64), ("awq", 4, 64), ("smoothquant", 8, None),
               ("w8a8-naive", 8, None), ("gguf-q8_0", None, None), ("gguf-q5_0", None, None),
               ("gguf-q4_1", None, None), ("gguf-q4_0", None, None))
KV_GRID = tuple((m, b, None) for b in (4, 2) for m in KV_METHODS)
# the mechanism itself: only W_q/W_k quantized, per row at 4 bits (the harshest RTN), with the
# massive rows or as many other rows kept exact
QK_GRID = tuple((m, 4, None) for m in QK_METHODS)
QK_DRAWS = 10  # rounding realizations (and random-row draws) of the "qk-draws" grid
QK_SITES = ("qk", "q", "k")
QK_LAYERS = ("all", "local", "global")
# O3 at more than one rounding: each draw 1..10 of the three qk methods, at 4 bits per row
QK_DRAWS_GRID = tuple((m, 4, None, {"draw": d}) for d in range(1, QK_DRAWS + 1) for m in QK_METHODS)
# O3 by part: Q only, K only, local only, global only (round to nearest)
QK_PARTS_GRID = tuple((m, 4, None, part) for part in ({"sites": "q"}, {"sites": "k"}, {"layers": "local"},
                                                      {"layers": "global"}) for m in QK_METHODS)
# by part on a model whose layers are all global (Llama-style, no local layers): Q only, K only
QK_SITES_GRID = QK_GRID + tuple(v for v in QK_PARTS_GRID if "sites" in v[3])
# "core": the questions' variants, most telling first (outlier-aware vs blind at 4 and 8 bits, KV
# at 4 then 2 bits); what 2 CPU cores could run on Gemma-3-270M in the time we had
CORE_GRID = (("awq", 4, 64), ("rtn", 4, 64), ("smoothquant", 8, None), ("w8a8-naive", 8, None),
             *((m, 4, None) for m in KV_METHODS), ("gptq", 4, 64), *((m, 2, None) for m in KV_METHODS),
             ("rtn", 8, None), ("gguf-q4_0", None, None))
GRIDS = {"full": WEIGHT_GRID + KV_GRID + QK_GRID, "core": CORE_GRID + QK_GRID, "weights": WEIGHT_GRID, "kv": KV_GRID,
         "qk": QK_GRID, "qk-draws": QK_GRID + QK_DRAWS_GRID, "qk-parts": QK_GRID + QK_PARTS_GRID,
         "qk-sites": QK_SITES_GRID}


# What each method protects from its own rounding (see the module docstring); None: nothing.
PROTECTS = {
    "awq": "activation channels entering the smoothed linears (not q/k/v/o on Gemma-3)",
    "smoothquant": "activation channels entering q/k/v and gate/up (migrated into the weights)",
    "kv-per-channel": "each cached K channel's own range (massive channels do not widen the others')",
    "kv-massive-aware": "the massive cached K dims (kept in fp16)",
    "qk-rtn-keep-massive": "the W_q/W_k rows that produce the massive pre-RoPE Q/K dims (kept exact)",
    "qk-rtn-keep-random": "as many other W_q/W_k rows per head (the equal-bits control)",
}


_PART_DEFAULTS = {"sites": "qk", "layers": "all", "draw": 0}


@dataclass(frozen=True)
class QuantSpec:
    """One quantized variant.

    Attributes:
        method: One of :data:`METHODS`.
        bits: Bits per weight (or per cached value); ``None`` for ``none`` and GGUF formats.
        group_size: Input weights per scale for ``rtn``/``gptq``/``awq`` (``None``: per row).
        alpha: SmoothQuant's migration strength.
        sites: ``qk-*`` only: ``"qk"``, ``"q"`` or ``"k"``, the projections quantized.
        layers: ``qk-*`` only: ``"all"``, ``"local"`` or ``"global"`` (sliding-window or full-attention layers).
        draw: ``qk-*`` only: 0 rounds to nearest; ``d >= 1`` rounds stochastically, seeded by ``d``,
            and draws ``qk-rtn-keep-random``'s rows anew.
    """

    method: str
    bits: int | None = None
    group_size: int | None = None
    alpha: float = 0.5
    sites: str = "qk"
    layers: str = "all"
    draw: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantError(f"unknown method {self.method!r}; methods are {', '.join(METHODS)}")
        allowed = BITS.get(self.method)
        if allowed is None and self.bits is not None:
            raise QuantError(f"{self.method} has no bits setting (its format fixes them); leave bits unset")
        if allowed is not None and self.bits not in allowed:
            raise QuantError(f"{self.method} supports bits {allowed}, got {self.bits}")
        if self.group_size is not None and self.method not in GROUPED:
            raise QuantError(f"{self.method} takes no group size (only {', '.join(GROUPED)} do)")
        if self.group_size is not None and self.group_size < 1:
            raise QuantError(f"group_size must be >= 1, got {self.group_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise QuantError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.sites not in QK_SITES or self.layers not in QK_LAYERS or self.draw < 0:
            raise QuantError(f"sites must be one of {QK_SITES}, layers one of {QK_LAYERS} and draw >= 0; got "
                             f"{self.sites!r}, {self.layers!r}, {self.draw}")
        if self.method not in QK_METHODS and self.part != ("qk", "all", 0):
            raise QuantError(f"sites, layers and draw are settings of the qk-* methods only, not of {self.method}")

    @classmethod
    def of(cls, method: str, bits: int | None = None, group_size: int | None | str = "auto", alpha: float = 0.5,
           **part: Any) -> QuantSpec:
        """A spec with the method's defaults filled in: bits (4 for weight-only, 8 for W8A8, 4 for
        KV) and, with ``group_size="auto"``, groups of 64 at 4 bits and per row at 8 bits;
        ``part``: ``sites``, ``layers``, ``draw`` of a ``qk-*`` method.

        >>> QuantSpec.of("qk-rtn", group_size=None, sites="k", draw=2).label
        'qk-rtn-w4-pc-k-d2'
        """
        if method not in METHODS:
            raise QuantError(f"unknown method {method!r}; methods are {', '.join(METHODS)}")
        bits = DEFAULT_BITS.get(method) if bits is None else bits
        if group_size == "auto":
            group_size = DEFAULT_GROUP if (method in GROUPED and bits == 4) else None
        return cls(method, bits, group_size, alpha, **part)

    @property
    def part(self) -> tuple[str, str, int]:
        """``(sites, layers, draw)``: which part of W_q/W_k a ``qk-*`` variant quantizes, and its draw."""
        return (self.sites, self.layers, self.draw)

    def key_dict(self) -> dict[str, Any]:
        """The spec as a dict for cache and cell keys: ``sites``/``layers``/``draw`` only when not
        their defaults, so the keys of the variants that existed before them are unchanged.

        >>> QuantSpec("qk-rtn", 4).key_dict() == {"method": "qk-rtn", "bits": 4, "group_size": None, "alpha": 0.5}
        True
        >>> QuantSpec("qk-rtn", 4, draw=3).key_dict()["draw"]
        3
        """
        return {k: v for k, v in asdict(self).items() if k not in _PART_DEFAULTS or v != _PART_DEFAULTS[k]}

    @property
    def label(self) -> str:
        """Short unique name, e.g. ``rtn-w4-g64``, ``smoothquant-w8a8-a0.5``, ``kv-per-token-4b``,
        ``qk-rtn-keep-massive-w4-pc-k-global-d3`` (K only, global layers, draw 3).

        >>> QuantSpec("qk-rtn-keep-random", 4, sites="q", layers="local", draw=2).label
        'qk-rtn-keep-random-w4-pc-q-local-d2'
        """
        suffix = "".join(f"-{v}" for v, d in ((self.sites, "qk"), (self.layers, "all")) if v != d)
        return self._label() + suffix + (f"-d{self.draw}" if self.draw else "")

    def _label(self) -> str:
        if self.method == "none" or self.method in GGUF_FORMATS:
            return self.method
        if self.method in KV_METHODS:
            return f"{self.method}-{self.bits}b"
        if self.method == "smoothquant":
            return f"smoothquant-a{self.alpha:g}"
        if self.method == "w8a8-naive":
            return self.method
        return f"{self.method}-w{self.bits}-" + (f"g{self.group_size}" if self.group_size else "pc")

    @property
    def family(self) -> str:
        """``"reference"``, ``"weight"``, ``"w8a8"`` or ``"kv"``."""
        if self.method == "none":
            return "reference"
        if self.method in KV_METHODS:
            return "kv"
        return "w8a8" if self.method in ("smoothquant", "w8a8-naive") else "weight"

    @property
    def outlier_aware(self) -> bool:
        """Whether the method protects large activations or Q/K values (AWQ, SmoothQuant, GPTQ's
        second-order error feedback does not count; massive-aware and per-channel KV do)."""
        return self.method in ("awq", "smoothquant", "kv-massive-aware", "kv-per-channel", "qk-rtn-keep-massive")


@dataclass(frozen=True)
class QuantStudyConfig:
    """A quantization study of one model (serialises to JSON).

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        variants: The variants; the reference ``none`` is always added first.
        tasks: Task names.
        n: Examples per task.
        seed: Seed of the examples and of everything random.
        calib_tokens, eval_tokens: Natural-text tokens (BBC news, in windows of ``seq_len``) for
            calibration and for the held-out measures; the two sets of windows are disjoint.
        seq_len: Window length.
        lam: Lambda of the massive rule.
        batch_size: Sequences per forward pass in the task evaluation.
        scorers: How the tasks are scored (:data:`massmech.causal.vocabulary.SCORERS`): ``strict``
            (every answer token the argmax), ``contains`` (the gold answer in the greedy
            continuation, the paper's), ``first-line``, ``rank`` (gold vs the task's distractors;
            skipped for a task without them, e.g. passkey). Each table row names its scorer.
        max_new_tokens: Greedy tokens of the generating scorers.
    """

    model: str = DEFAULT_MODEL
    variants: tuple[QuantSpec, ...] = ()
    tasks: tuple[str, ...] = DEFAULT_TASKS
    n: int = 40
    seed: int = 0
    calib_tokens: int = 8192
    eval_tokens: int = 4096
    seq_len: int = 512
    lam: float = 5.0
    batch_size: int = 8
    scorers: tuple[str, ...] = ("strict",)
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if not is_task_name(t)]
        if unknown:
            raise QuantError(f"unknown tasks {unknown}; tasks are {', '.join(TASKS)}")
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad or not self.scorers or self.max_new_tokens < 1:
            raise QuantError(f"scorers must be a non-empty subset of {SCORERS} (got {self.scorers}) and "
                             f"max_new_tokens >= 1 (got {self.max_new_tokens})")
        if self.n < 1 or self.calib_tokens < self.seq_len or self.eval_tokens < 2:
            raise QuantError("need n >= 1, calib_tokens >= seq_len and eval_tokens >= 2")

    def key_dict(self) -> dict[str, Any]:
        """The config less its variants, for cell keys: ``scorers`` and ``max_new_tokens`` only when
        not their defaults, so the cells of configs from before them keep their keys."""
        out = asdict(replace(self, variants=()))
        if self.scorers == ("strict",):
            out.pop("scorers")
            out.pop("max_new_tokens")
        return out

    def all_variants(self) -> list[QuantSpec]:
        """``none`` first, then the configured variants, without duplicates."""
        out = [QuantSpec("none")]
        for v in self.variants:
            if v not in out:
                out.append(v)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantStudyConfig:
        raw = json.loads(text)
        raw["variants"] = tuple(QuantSpec(**v) for v in raw.get("variants", ()))
        raw["tasks"] = tuple(raw.get("tasks", DEFAULT_TASKS))
        raw["scorers"] = tuple(raw.get("scorers", ("strict",)))
        return cls(**raw)


def preset(grid: str = "full", **overrides: Any) -> QuantStudyConfig:
    """The study over a named grid (:data:`GRIDS`: ``full``, ``core``, ``weights``, ``kv``, ``qk``,
    ``qk-draws``, ``qk-parts``, ``qk-sites``).

    >>> len(preset("qk", model="tiny-llama").variants), len(preset("qk-draws").variants)
    (3, 33)
    >>> len(preset("qk-parts").variants), len(preset("qk-sites").variants)
    (15, 9)
    """
    if grid not in GRIDS:
        raise QuantError(f"unknown grid {grid!r}; grids are {', '.join(GRIDS)}")
    variants = tuple(QuantSpec(m, b, g, **(rest[0] if rest else {})) for m, b, g, *rest in GRIDS[grid])
    return QuantStudyConfig(**({"variants": variants} | overrides))


def study_config(model: str, grid: str = "full", **overrides: Any) -> QuantStudyConfig:
    """The study's config for ``model`` over a named grid (:func:`preset` with the model).

    >>> study_config("tiny-llama", "kv").model
    'tiny-llama'
    """
    return preset(grid, model=model, **overrides)


QUICK_GRID = (("rtn", 4, 64), ("kv-per-token", 2, None), *QK_GRID)  # one of each family: the quick variant


def quick(config: QuantStudyConfig) -> QuantStudyConfig:
    """The ``massmech reproduce --quick`` version: one variant of each family the config has
    (:data:`QUICK_GRID`), the ``qk-*`` variants of the first other part or draw it has, 8 examples
    per task, less calibration and held-out text, and at most
    :data:`~massmech.causal.vocabulary.QUICK_NEW_TOKENS` generated tokens.

    >>> q = quick(preset("qk-draws", scorers=("contains",)))
    >>> [v.label for v in quick(preset("full")).variants][:2], q.n, q.max_new_tokens
    (['rtn-w4-g64', 'kv-per-token-2b'], 8, 12)
    >>> [v.label for v in quick(preset("qk-draws")).variants][-1]
    'qk-rtn-keep-random-w4-pc-d1'
    """
    families = {v.family for v in config.variants}
    keep = tuple(v for m, b, g in QUICK_GRID if (v := QuantSpec(m, b, g)).family in families)
    parts = [v.part for v in config.variants if v.part != ("qk", "all", 0)]
    keep += tuple(v for v in config.variants if parts and v.part == parts[0])
    return replace(config, variants=keep, n=min(config.n, 8), calib_tokens=min(config.calib_tokens, 1024),
                   eval_tokens=min(config.eval_tokens, 1024), seq_len=min(config.seq_len, 256),
                   max_new_tokens=min(config.max_new_tokens, QUICK_NEW_TOKENS))

"""The analyze study's config (the main job) and its presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from massmech.core.catalog import DEFAULT_MODEL
from massmech.errors import ConfigError

#: The saved activations' axes (those :func:`massmech.core.activations.from_activations` reads;
#: spelled here so that ``--help`` imports no torch; a test keeps the two equal).
AXES = ("bthd", "bhtd", "thd")


@dataclass(frozen=True)
class AnalyzeConfig:
    """The main job: capture Q/K/V statistics on natural text, frequency analysis, figures.

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        n_tokens: Tokens to capture over.
        seq_len: Tokens per window (one BBC article each; your own texts are cut into
            consecutive windows); also the context the bands refer to.
        text: Your own corpus instead of BBC news: a .txt/.md file (one text), a .jsonl file
            (``text_field`` of each line) or a folder of .txt files.
        dataset: Your own corpus from ``datasets``: a ``save_to_disk`` folder or a hub id (needs
            a network), column ``text_field`` of split ``dataset_split``.
        batch_size: Windows per forward pass.
        lam: Lambda of the massive-value rule (per-head mean).
        n_bands: Equal-count bands (heatmap band edges).
        fast_turns: Turns inside the context that make a pair "high" (context bands).
        threshold_share: Low-half energy fraction whose first crossing is the ``threshold_layer``
            (a fragile single-threshold marker, reported under its own name).
        n_chunks: The windows are captured in this many chunks (one pass in all): the bootstrap
            unit of the emergence layer (:func:`massmech.core.emergence.emergence`).
        emergence_factors: Band edges of the emergence layer: pairs with wavelength above
            factor x context; the layer is reported at factor 1 and its range over these.
        n_boot: Bootstrap resamples of the chunks.
        heatmap_layers: Layers of the M heatmaps; empty = first, middle and last.
        bars_layer, bars_head, bars_tokens: The 3D token x dim view (one head, first window).
        exclude_first_token: Leave each window's first token out of the statistics.
        seed: Order of the corpus articles.
        activations: Saved activations instead of a model: ``"q=PATH,k=PATH,v=PATH"`` (one file
            per site, one layer each; .safetensors, .pt or .npy), read by
            :func:`massmech.core.activations.from_activations` with ``axes``, ``stage`` and
            ``layer`` (the layer's label). Needs ``rope_base`` and ``d_head`` (and ``rotary_dim``
            for partial rotary); the context of the bands is the activations' length. The run's
            manifest then records ``model="activations"``, ``n_tokens=0`` and ``seq_len=0``: no
            model ran, and tokens and context come from the files (``summary.json`` has them).
        rope_base, d_head, rotary_dim: The RoPE the activations come from.
        axes: The activations' axes: ``bthd`` (batch, tokens, heads, d_head), ``bhtd`` or ``thd``.
        n_heads: Heads per site of the activations, ``"q=32,k=8,v=8"`` (or one number for all): a
            tensor whose heads differ (e.g. axes swapped) is refused before any work.
        stage: ``pre`` or ``post`` RoPE: where the activations were taken.
        layer: The activations' layer (its label in the tables).
        train_context: The model's training context in tokens: adds the critical-pair prediction
            (:mod:`massmech.core.critical`: ``predicted.parquet``, k* on the spectra). Needs
            ``train_context_source``.
        train_context_source: Where that context is stated (a paper, model card or config): an
            input with a source, never a guess.
    """

    model: str = DEFAULT_MODEL
    n_tokens: int = 4096
    seq_len: int = 512
    batch_size: int = 4
    lam: float = 5.0
    n_bands: int = 3
    fast_turns: float = 8.0
    threshold_share: float = 0.75
    n_chunks: int = 8
    emergence_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    n_boot: int = 1000
    heatmap_layers: tuple[int, ...] = ()
    bars_layer: int = 1
    bars_head: int = 0
    bars_tokens: int = 24
    exclude_first_token: bool = False
    seed: int = 0
    text: str | None = None
    dataset: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    activations: str | None = None
    rope_base: float | None = None
    d_head: int | None = None
    rotary_dim: int | None = None
    axes: str = field(default="bthd", metadata={"choices": AXES})
    n_heads: str | None = None
    stage: str = field(default="pre", metadata={"choices": ("pre", "post")})
    layer: int = 0
    train_context: int | None = None
    train_context_source: str = ""

    def __post_init__(self) -> None:
        if self.train_context is not None and (self.train_context < 2 or not self.train_context_source.strip()):
            raise ConfigError(f"train_context={self.train_context} needs train_context >= 2 and train_context_source: "
                              "where the training context is stated (a paper, model card or config), e.g. "
                              "--train-context 4096 --train-context-source 'Llama 2 paper, Table 1'")
        if self.train_context is None and self.train_context_source:
            raise ConfigError("train_context_source is given without train_context")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AnalyzeConfig:
        d = json.loads(text)
        return cls(**(d | {k: tuple(d[k]) for k in ("heatmap_layers", "emergence_factors") if k in d}))


def default_layers(n_layers: int) -> list[int]:
    """First, middle and last layer: the layers figures show by default.

    >>> default_layers(30)
    [0, 15, 29]
    """
    return sorted({0, n_layers // 2, n_layers - 1})


def preset(name: str, **overrides) -> AnalyzeConfig:
    """``default`` (the main job: 4,096 tokens) or ``ledger`` (16,384 tokens, what the claim ledger reads).

    >>> preset("ledger", model="tiny-llama").n_tokens
    16384
    """
    base = {"default": {}, "ledger": {"n_tokens": 16_384}}
    if name not in base:
        raise ConfigError(f"unknown analyze preset {name!r}; presets are {', '.join(base)}")
    return AnalyzeConfig(**(base[name] | overrides))


def quick(config: AnalyzeConfig) -> AnalyzeConfig:
    """The ``massmech reproduce --quick`` version: 2,048 tokens, 200 bootstrap draws.

    >>> quick(preset("ledger")).n_tokens
    2048
    """
    return replace(config, n_tokens=min(config.n_tokens, 2048), n_boot=min(config.n_boot, 200))

"""What a disruption replaces: the :class:`Disruption` value object and its vocabulary.

* **target** ``q``, ``k`` or ``qk``; **stage** ``pre`` (the input of RoPE; ``hook_q`` or
  ``hook_q_normed`` on QK-norm models) or ``post`` (``hook_rot_q``: what the paper's code did);
* **selection rule**: the paper's lambda rule, the official code's top-k per head, or explicit
  dims (the rule itself lives in :func:`massmech.core.detect.massive_mask`); ``M`` comes per
  prompt from the prompt's own Q/K (``selection="prompt"``, the paper) or once from a
  calibration corpus (``selection="calibration"``);
* **replacement**: the per-dim mean over the prompt's tokens (default), zero, the
  calibration mean, ``"pooled_mean"``: one scalar per head, the mean over the selected dims
  of each dim's prompt mean (what the paper's public code does; equal to ``"mean"`` at k = 1), or,
  after RoPE only, ``"rotated_mean"``: the prompt's mean *before* RoPE, rotated to each position
  by the model's own tables (:mod:`massmech.core.rotation`). A post-RoPE ``"mean"`` averages a
  pair's vector over positions where it points in different directions (a fast pair's mean is
  near zero); the rotated mean is the value a pre-RoPE ``"mean"`` disruption of the same dims
  leaves after RoPE, so a post-RoPE selection can be replaced consistently with the rotation;
* **layers** and **heads** (default all), or **units**: explicit ``(layer, head)`` pairs (e.g. the
  heads an attribution ranked first), each head disrupted in its own layer only;
* a **control** elsewhere in the same heads. ``"matched"`` (the default of studies): random
  non-massive dims, taken in a seeded random order per head until the variance they remove is
  closest to what the rule's dims remove there (matched in size, not only in count). The others
  replace the same *number* of dims as the rule selected in each head: the lowest-norm dims
  (``"lowest"``, the paper's control), random non-massive dims (``"random"``) or random
  non-massive dims of one third of the RoPE pairs (``"band-low"``, ``"band-mid"``,
  ``"band-high"``). Count-matched controls usually remove far less variance than the massive
  dims: compare ``removed_variance``, not only ``n_dims``;
* **granularity**: ``"dim"`` (default, the paper's code) replaces each selected coordinate;
  ``"pair"`` replaces both coordinates of each RoPE pair that holds a selected one. A coordinate
  and its partner rotate into each other (in the ``half`` layout the partner of ``i`` is
  ``i + rotary_dim/2``): at ``dim`` granularity a coordinate replaced before RoPE gets its
  untouched partner rotated back into it, and one replaced after leaves the partner's half of
  the rotating component; ``pair`` removes the whole 2-D component. Its controls pick whole
  pairs too (as many pairs, or as much removed variance); unrotated dims of a partial rotary
  head count as units of one;
* **kv_cache**: ``"prefill"`` (default) disrupts the prompt only; ``"every_step"`` also
  replaces each generated token's selected dims by the prompt's replacement values.

How it is applied (hooks, masks, the no-op guard) is :mod:`massmech.causal.intervention`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from massmech.causal.vocabulary import (
    CONTROLS,
    GRANULARITIES,
    KV_CACHE,
    MATCHED_CONTROLS,
    PAPER_SETTINGS,
    REPLACEMENTS,
    RULES,
    SELECTIONS,
    STAGES,
    TARGETS,
    paper_setting,
)
from massmech.core.models import LoadedModel
from massmech.core.qkvstats import QKVStats
from massmech.errors import DisruptionError

__all__ = ["CONTROLS", "GRANULARITIES", "KV_CACHE", "PAPER_SETTINGS", "REPLACEMENTS", "RULES", "SELECTIONS", "STAGES", "TARGETS",
           "Disruption", "paper_setting"]


@dataclass(frozen=True)
class Disruption:
    """What to replace in Q/K, and with what (see the module docstring).

    Attributes:
        target: ``"q"``, ``"k"`` or ``"qk"``.
        stage: ``"pre"`` or ``"post"`` RoPE.
        rule: ``"lambda"``, ``"topk"`` or ``"dims"``.
        lam: Threshold of the lambda rule (per-head mean).
        k: Dims per head of the top-k rule.
        dims: Explicit dims (``rule="dims"``), applied in every selected head.
        selection: ``"prompt"`` (each prompt's own M) or ``"calibration"`` (fixed, from a corpus).
        replace: ``"mean"`` over the prompt's tokens, ``"zero"``, ``"calib_mean"``, ``"pooled_mean"`` or
            ``"rotated_mean"`` (``stage="post"`` only).
        layers: Layers to disrupt (``None`` = all).
        heads: Heads to disrupt (``None`` = all; K heads are the KV heads).
        units: ``(layer, head)`` pairs to disrupt instead of ``layers`` x ``heads`` (``None``: those).
        control: ``None`` (disrupt the selected dims) or a control (see module docstring).
        kv_cache: ``"prefill"`` or ``"every_step"``.
        seed: Seed of the random controls.
        granularity: ``"dim"`` (each selected coordinate) or ``"pair"`` (whole RoPE pairs).
        control_scale: How much the ``"matched"`` control removes, as a multiple of the selected
            dims' removed variance (``"random"``: of their count, capped at every allowed dim).
            1 matches in size; :func:`massmech.causal.klmatch.kl_match` finds the scale whose
            control moves the next-token distribution on neutral text as much as the disruption.

    >>> d = Disruption(target="qk", stage="post", rule="topk", k=2)
    >>> d.sites, d.label()
    (('q', 'k'), 'qk.post.top2')
    >>> Disruption(rule="dims")
    Traceback (most recent call last):
    ...
    massmech.errors.DisruptionError: rule='dims' needs dims=(...)
    """

    target: str = "qk"
    stage: str = "pre"
    rule: str = "lambda"
    lam: float = 5.0
    k: int = 4
    dims: Sequence[int] = ()
    selection: str = "prompt"
    replace: str = "mean"
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    control: str | None = None
    kv_cache: str = "prefill"
    seed: int = 0
    granularity: str = "dim"
    control_scale: float = 1.0
    units: Sequence[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("target", self.target, tuple(TARGETS)),
            ("stage", self.stage, STAGES),
            ("rule", self.rule, RULES),
            ("selection", self.selection, SELECTIONS),
            ("replace", self.replace, REPLACEMENTS),
            ("control", self.control, CONTROLS),
            ("kv_cache", self.kv_cache, KV_CACHE),
            ("granularity", self.granularity, GRANULARITIES),
        ):
            if value not in allowed:
                raise DisruptionError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("dims", "layers", "heads"):  # any sequence in, tuples of int stored (hashable, JSON)
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(int(x) for x in v))
        if self.units is not None:
            units = tuple(sorted({(int(a), int(b)) for a, b in self.units}))
            if not units or min(min(u) for u in units) < 0:
                raise DisruptionError(f"units must be non-empty (layer, head) pairs >= 0, got {self.units}")
            if self.layers is not None or self.heads is not None:
                raise DisruptionError("units name (layer, head) pairs: leave layers and heads at None")
            object.__setattr__(self, "units", units)
        object.__setattr__(self, "lam", float(self.lam))  # 5 and 5.0 are one disruption
        object.__setattr__(self, "k", int(self.k))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "control_scale", float(self.control_scale))
        if not self.control_scale > 0:
            raise DisruptionError(f"control_scale must be > 0, got {self.control_scale}")
        if self.control_scale != 1.0 and self.control not in (*MATCHED_CONTROLS, "random"):
            raise DisruptionError(f"control_scale scales the {', '.join(map(repr, MATCHED_CONTROLS))} or 'random' "
                                  f"control; control is {self.control!r}")
        if self.replace == "rotated_mean" and self.stage != "post":
            raise DisruptionError("replace='rotated_mean' puts the pre-RoPE mean, rotated, into post-RoPE Q/K: use "
                                  "stage='post' (before RoPE the prompt mean, replace='mean', is already that)")
        if self.rule == "lambda" and not self.lam > 0:
            raise DisruptionError(f"lam must be > 0, got {self.lam}")
        if self.rule == "topk" and self.k < 1:
            raise DisruptionError(f"k must be >= 1, got {self.k}")
        if self.rule == "dims":
            if not self.dims:
                raise DisruptionError("rule='dims' needs dims=(...)")
            if len(set(self.dims)) != len(self.dims) or min(self.dims) < 0:
                raise DisruptionError(f"dims must be distinct and >= 0, got {self.dims}")
        elif self.dims:
            raise DisruptionError(f"dims={self.dims} is only used with rule='dims' (rule is {self.rule!r})")
        for name in ("layers", "heads"):
            v = getattr(self, name)
            if v is not None and not v:
                raise DisruptionError(f"{name}=() selects nothing; use None for all")

    @property
    def sites(self) -> tuple[str, ...]:
        return TARGETS[self.target]

    def layer_list(self, n_layers: int) -> list[int]:
        """The layers it acts in.

        >>> Disruption(units=[(3, 0), (1, 2), (3, 1)]).layer_list(4), Disruption(layers=[2]).layer_list(4)
        ([1, 3], [2])
        """
        if self.units is not None:
            return sorted({layer for layer, _ in self.units})
        return list(self.layers) if self.layers is not None else list(range(n_layers))

    def heads_at(self, layer: int) -> tuple[int, ...] | None:
        """The heads it acts on in ``layer`` (``None``: all).

        >>> Disruption(units=[(3, 0), (1, 2), (3, 1)]).heads_at(3), Disruption(heads=[1]).heads_at(0)
        ((0, 1), (1,))
        """
        if self.units is not None:
            return tuple(h for la, h in self.units if la == layer)
        return self.heads

    def as_control(self, control: str = "matched", scale: float = 1.0) -> Disruption:
        """The same disruption with a control instead of the selected dims (``scale``: see
        ``control_scale``).

        >>> d = Disruption(rule="topk", k=1)
        >>> d.as_control().label(), d.as_control("lowest").label(), d.as_control(scale=2.5).label()
        ('qk.pre.top1.ctrl-matched-s0', 'qk.pre.top1.ctrl-lowest', 'qk.pre.top1.ctrl-matched-s0.x2.5')
        """
        return replace(self, control=control, control_scale=scale)

    def protocol(self, control: str | None = None) -> str:
        """What this disruption is, in words (every reported comparison states it).

        Only the official code's protocol (post-RoPE Q and K, top-k per head, one pooled mean or
        zero per head, prompt only, every layer and head) is called "the paper's protocol".

        >>> Disruption(stage="post", rule="topk", k=1, replace="pooled_mean").protocol("lowest")
        "the paper's protocol (post-RoPE Q,K; top-1 per head; one pooled mean per head; prompt only) vs lowest-norm control"
        """
        paper = (self.stage == "post" and self.rule == "topk" and self.replace in ("pooled_mean", "zero")
                 and self.target == "qk" and self.kv_cache == "prefill" and self.selection == "prompt"
                 and self.layers is None and self.heads is None and self.units is None and self.control is None
                 and self.granularity == "dim")
        sel = {"lambda": f"dims above {self.lam:g}x the head's mean norm", "topk": f"top-{self.k} per head",
               "dims": f"dims {list(self.dims)}"}[self.rule]
        rep = {"mean": "each dim's prompt mean", "zero": "zero", "calib_mean": "calibration means",
               "pooled_mean": "one pooled mean per head",
               "rotated_mean": "the pre-RoPE prompt mean rotated to each position"}[self.replace]
        where = f"{self.stage}-RoPE {','.join(s.upper() for s in self.sites)}"
        scope = "prompt only" if self.kv_cache == "prefill" else "prompt and every decoded token"
        if self.granularity == "pair":
            sel += ", whole RoPE pairs"
        if self.units is not None:
            sel += f", only in {len(self.units)} (layer, head) units"
        text = f"{'the paper' if paper else 'massmech'}'s {'protocol' if paper else 'variant'} ({where}; {sel}; {rep}; {scope})"
        if control:
            text += " vs " + {"matched": "variance-matched random control", "lowest": "lowest-norm control",
                              "band-matched": "variance-matched random control of the same RoPE band",
                              "random": "count-matched random control"}.get(control, f"{control} control")
        return text

    def to_dict(self) -> dict:
        """All fields as a dict (see :meth:`from_dict`).

        ``granularity``, ``control_scale`` and ``units`` came after the first cell version: at their
        defaults (``"dim"``, 1, ``None``) they are left out, so the dict, and every cell key and pinned digest made
        from it, is what it was.

        >>> Disruption(layers=[0, 1]).to_dict()
        {'target': 'qk', 'stage': 'pre', 'rule': 'lambda', 'lam': 5.0, 'k': 4, 'dims': (), 'selection': 'prompt', 'replace': 'mean', 'layers': (0, 1), 'heads': None, 'control': None, 'kv_cache': 'prefill', 'seed': 0}
        >>> Disruption(granularity="pair").to_dict()["granularity"]
        'pair'
        """
        d = asdict(self)
        for name, default in (("granularity", "dim"), ("control_scale", 1.0), ("units", None)):
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Disruption:
        """Inverse of :meth:`to_dict` (also after a JSON round trip, which turns tuples into lists).

        >>> import json
        >>> d = Disruption(rule="dims", dims=[3, 7], heads=[0])
        >>> Disruption.from_dict(json.loads(json.dumps(d.to_dict()))) == d
        True
        >>> u = Disruption(units=[(2, 1), (0, 3)])
        >>> Disruption.from_dict(json.loads(json.dumps(u.to_dict()))) == u
        True
        """
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if d.get("units") is not None:
            d["units"] = tuple(tuple(u) for u in d["units"])
        return cls(**d)

    def label(self) -> str:
        """Short, stable, human-readable name (used as a condition id in sweeps).

        >>> Disruption(target="k", lam=3, layers=range(2, 5), kv_cache="every_step").label()
        'k.pre.lam3.L2-4.every_step'
        """
        sel = {"lambda": f"lam{self.lam:g}", "topk": f"top{self.k}", "dims": "dims" + "-".join(map(str, self.dims))}[self.rule]
        parts = [self.target, self.stage, sel]
        if self.layers is not None:
            parts.append(f"L{min(self.layers)}-{max(self.layers)}" if _is_range(self.layers) else "L" + ",".join(map(str, self.layers)))
        if self.heads is not None:
            parts.append("H" + ",".join(map(str, self.heads)))
        if self.units is not None:
            parts.append("U" + ",".join(f"{la}:{h}" for la, h in self.units))
        if self.selection != "prompt":
            parts.append(self.selection)
        if self.replace != "mean":
            parts.append(self.replace)
        if self.kv_cache != "prefill":
            parts.append(self.kv_cache)
        if self.granularity != "dim":
            parts.append(self.granularity)
        if self.control:
            parts.append(f"ctrl-{self.control}" + (f"-s{self.seed}" if self.control != "lowest" else ""))
            if self.control_scale != 1.0:
                parts.append(f"x{self.control_scale:.4g}")
        return ".".join(parts)

    def validate(self, model: LoadedModel, calibration: QKVStats | None = None) -> None:
        """Check the disruption against a model (and its calibration statistics).

        Raises:
            DisruptionError: A site/stage the model lacks, k or dims beyond ``d_head``, layers
                or heads out of range, a band control on a model without RoPE, or a missing or
                mismatched calibration.

        >>> import massmech as mm
        >>> Disruption(stage="post").validate(mm.load_model("tiny-gpt2"))
        Traceback (most recent call last):
        ...
        massmech.errors.DisruptionError: tiny-gpt2 has no 'post' stage for 'q' (it has ('pre',)): use stage='pre'; the model has no RoPE, so no post-RoPE site
        """
        info = model.info
        for site in self.sites:
            if self.stage not in model.stages(site):
                raise DisruptionError(
                    f"{info.name} has no {self.stage!r} stage for {site!r} (it has "
                    f"{model.stages(site)}): use stage='pre'"
                    + ("" if info.has_rope else "; the model has no RoPE, so no post-RoPE site")
                )
        if self.rule == "topk" and self.k > info.d_head:
            raise DisruptionError(f"k={self.k} is larger than d_head={info.d_head} of {info.name}")
        if self.rule == "dims" and max(self.dims) >= info.d_head:
            raise DisruptionError(f"dims {self.dims} out of range: d_head={info.d_head} of {info.name}")
        if self.layers is not None and not all(0 <= x < info.n_layers for x in self.layers):
            raise DisruptionError(f"layers {self.layers} out of range: {info.name} has {info.n_layers}")
        if self.heads is not None or self.units is not None:
            n = min(info.n_heads if s == "q" else info.n_kv_heads for s in self.sites)
            heads = self.heads if self.units is None else [h for _, h in self.units]
            if not all(0 <= h < n for h in heads):
                raise DisruptionError(f"heads {sorted(set(heads))} out of range [0, {n}) for target {self.target!r}")
        if self.units is not None and not all(layer < info.n_layers for layer, _ in self.units):
            raise DisruptionError(f"units {self.units} name layers out of range: {info.name} has {info.n_layers}")
        if self.control and self.control.startswith("band") and model.rope_or_none is None:
            raise DisruptionError(f"control {self.control!r} needs RoPE pairs; {info.name} has no RoPE")
        if self.replace == "rotated_mean" and model.rope_or_none is None:
            raise DisruptionError(f"replace='rotated_mean' rotates by the model's RoPE tables; {info.name} has no "
                                  "readable ones (model.rope says why): use replace='mean'")
        if self.granularity == "pair" and model.rope_or_none is None:
            raise DisruptionError(f"granularity='pair' needs RoPE pairs; {info.name} has no RoPE: use 'dim'")
        if self.selection == "calibration" or self.replace == "calib_mean":
            if calibration is None:
                raise DisruptionError(
                    f"selection={self.selection!r}, replace={self.replace!r} need calibration "
                    "statistics: pass calibration=capture_stats(model, corpus)"
                )
            missing = [s for s in self.sites if (s, self.stage) not in calibration.keys()]
            if missing:
                raise DisruptionError(
                    f"the calibration statistics lack {[(s, self.stage) for s in missing]}; "
                    f"they hold {calibration.keys()}"
                )
            if calibration.model != info.name:
                raise DisruptionError(f"calibration is from {calibration.model!r}, not {info.name!r}")
            layers = self.layer_list(info.n_layers)
            absent = [x for x in layers if x not in calibration.layers]
            if absent:
                raise DisruptionError(f"the calibration statistics lack layers {absent}")

    def to_hooks(self, model: LoadedModel, calibration: QKVStats | None = None) -> list[tuple[str, Any]]:
        """TransformerLens ``fwd_hooks`` applying this disruption to every row and token.

        For inputs without padding; use :class:`Intervention` with masks otherwise. The list
        ends with a guard hook that raises :class:`NoOpDisruptionError` after a forward pass
        in which a row changed nothing.

        >>> import massmech as mm, torch
        >>> model = mm.load_model("tiny-llama")
        >>> hooks = Disruption(target="k", rule="topk", k=1).to_hooks(model)
        >>> [name for name, _ in hooks]  # K of each layer, then the end-of-forward guard
        ['blocks.0.attn.hook_k', 'blocks.1.attn.hook_k', 'ln_final.hook_in']
        >>> with torch.inference_mode(), model.hooks(hooks):
        ...     logits = model.logits(torch.tensor([[5, 6, 7, 8]]))
        >>> tuple(logits.shape)
        (1, 4, 259)
        """
        from massmech.causal.intervention import Intervention  # it builds on this module

        return Intervention(model, [self], calibration=calibration).fwd_hooks


def _is_range(xs: Sequence[int]) -> bool:
    return len(xs) > 1 and list(xs) == list(range(min(xs), max(xs) + 1))

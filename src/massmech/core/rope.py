"""The rotary position embedding (RoPE) of a model, read from the model itself.

A :class:`RopeSpec` says, for every layer, which dimensions of a head are rotated together
(a *pair*), at which angular frequency each pair turns (radians per token), and therefore its
wavelength in tokens. It is never built from ``cfg.rotary_base``: TransformerLens' config can be
wrong (SmolLM2-135M says 10000, the model uses 100000). Instead it is read from the cos/sin
tables the model really uses at run time (``blocks.{L}.attn.hook_cos/hook_sin``), which also
gives per-layer bases (Gemma 3's local and global layers), partial rotary dims and the pairing
layout for free.

Conventions:
    * pair ``i`` has frequency ``inv_freq[i]``; pair 0 turns fastest, the last pair slowest
      ("low-frequency pairs" are the high pair indices);
    * layout ``"half"`` (HF ``rotate_half``, Llama/Qwen/Gemma/NeoX) pairs dim ``i`` with
      ``i + rotary_dim/2``; layout ``"adjacent"`` (GPT-J style) pairs ``2i`` with ``2i+1``;
    * dims ``>= rotary_dim`` are not rotated (partial rotary) and belong to no pair (-1).

:func:`massmech.diagnostics.verify_rope.verify_rope` checks a spec against the rotation the model applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from massmech._notebook import distinct, html_table
from massmech.errors import IndexRangeError, RopeError

if TYPE_CHECKING:  # pragma: no cover
    pass

Layout = Literal["half", "adjacent"]


@dataclass(frozen=True, repr=False)
class RopeSpec:
    """Per-layer rotary embedding of a model.

    Attributes:
        d_head: Head dimension.
        rotary_dim: Number of rotated dims per head (``d_head`` unless partial rotary).
        layout: ``"half"`` (rotate_half pairing) or ``"adjacent"`` (interleaved pairs).
        inv_freq: Per layer, the angular frequency of each pair in radians per token,
            shape ``[n_layers][rotary_dim // 2]``.
        scaling: Per layer, the amplitude of the cos/sin tables (HF's ``attention_scaling``;
            1.0 for plain RoPE).

    >>> spec = RopeSpec.from_base(10_000, 8, n_layers=2)
    >>> spec
    RopeSpec(d_head=8, rotary_dim=8, layout='half', layers=2, base=1e+04)
    >>> spec.n_layers, spec.n_pairs
    (2, 4)
    """

    d_head: int
    rotary_dim: int
    layout: Layout
    inv_freq: tuple[tuple[float, ...], ...]
    scaling: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.layout not in ("half", "adjacent"):
            raise RopeError(f"layout must be 'half' or 'adjacent', got {self.layout!r}")
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.d_head:
            raise RopeError(
                f"rotary_dim must be even and in (0, d_head={self.d_head}], got {self.rotary_dim}"
            )
        if any(len(f) != self.n_pairs for f in self.inv_freq):
            raise RopeError(f"every layer needs {self.n_pairs} frequencies")
        if len(self.scaling) != len(self.inv_freq):
            raise RopeError("scaling needs one entry per layer")

    def _summary(self) -> dict[str, str]:
        """Bases (one fit per distinct layer) and scaling, as short repr fields."""
        bases = distinct(fit_base(np.asarray(f), self.rotary_dim) for f in dict.fromkeys(self.inv_freq))
        out = {"bases": bases} if "," in bases else {"base": bases[1:-1]}
        if any(x != 1.0 for x in self.scaling):
            scaling = distinct(self.scaling)
            out["scaling"] = scaling if "," in scaling else scaling[1:-1]
        return out

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self._summary().items())
        return (
            f"RopeSpec(d_head={self.d_head}, rotary_dim={self.rotary_dim}, layout={self.layout!r}, "
            f"layers={self.n_layers}{extra})"
        )

    def _repr_html_(self) -> str:
        wl = [2 * math.pi / f for f in (self.inv_freq[0][0], self.inv_freq[0][-1])] if self.n_layers else []
        rows = {"d_head": self.d_head, "rotary_dim": self.rotary_dim, "pairs": self.n_pairs,
                "layout": self.layout, "layers": self.n_layers, **self._summary()}
        if wl:
            rows["wavelengths (layer 0)"] = f"{wl[0]:.3g} .. {wl[1]:.3g} tokens"
        return html_table("RopeSpec", rows)

    @property
    def n_layers(self) -> int:
        return len(self.inv_freq)

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexRangeError(f"layer {layer} out of range: the model has {self.n_layers} layers")

    def frequencies(self, layer: int) -> np.ndarray:
        """Angular frequency of each pair in radians per token, shape ``[n_pairs]``.

        >>> RopeSpec.from_base(10_000, 8).frequencies(0).tolist()
        [1.0, 0.1, 0.01, 0.001]
        """
        self._check_layer(layer)
        return np.asarray(self.inv_freq[layer], dtype=np.float64)

    def wavelengths(self, layer: int) -> np.ndarray:
        """Tokens per full turn (``2*pi / frequency``) of each pair, shape ``[n_pairs]``.

        >>> RopeSpec.from_base(10_000, 8).wavelengths(0).round(1).tolist()
        [6.3, 62.8, 628.3, 6283.2]
        """
        return 2 * math.pi / self.frequencies(layer)

    def base(self, layer: int) -> float:
        """The base ``b`` of the geometric fit ``freq_i = b ** (-2i / rotary_dim)``.

        Exact for plain RoPE; for scaled variants (NTK, YaRN, Llama-3) it is a summary only.

        >>> round(RopeSpec.from_base(500_000, 128).base(0))
        500000
        """
        return fit_base(self.frequencies(layer), self.rotary_dim)

    def bases(self) -> list[float]:
        """:meth:`base` for every layer.

        >>> from transformers import Gemma3TextConfig
        >>> [round(b) for b in RopeSpec.from_hf_config(Gemma3TextConfig(num_hidden_layers=6, head_dim=64)).bases()]
        [10000, 10000, 10000, 10000, 10000, 1000000]
        """
        return [self.base(layer) for layer in range(self.n_layers)]

    def critical_pair(self, train_context: float, layer: int | None = None) -> float | list[float]:
        """Liu et al.'s critical pair ``k*`` (see :mod:`massmech.core.critical`): per layer, or of one layer.

        >>> round(RopeSpec.from_base(10_000, 128).critical_pair(4096, layer=0), 2)  # Llama-2
        45.03
        """
        from massmech.core.critical import critical_pair_from_frequencies

        if layer is not None:
            return critical_pair_from_frequencies(self.frequencies(layer), train_context)
        return [critical_pair_from_frequencies(self.frequencies(li), train_context) for li in range(self.n_layers)]

    def pair_dims(self, pair: int) -> tuple[int, int]:
        """The two dims of a head rotated together as pair ``pair``.

        >>> RopeSpec.from_base(10_000, 8).pair_dims(1), RopeSpec.from_base(10_000, 8, layout="adjacent").pair_dims(1)
        ((1, 5), (2, 3))
        """
        if not 0 <= pair < self.n_pairs:
            raise IndexRangeError(f"pair {pair} out of range [0, {self.n_pairs})")
        if self.layout == "half":
            return pair, pair + self.n_pairs
        return 2 * pair, 2 * pair + 1

    def dim_to_pair(self) -> np.ndarray:
        """Pair index of every dim of a head (-1 for dims that are not rotated), ``[d_head]``.

        >>> RopeSpec.from_base(10_000, 8, rotary_dim=4).dim_to_pair().tolist()  # partial rotary
        [0, 1, 0, 1, -1, -1, -1, -1]
        """
        out = np.full(self.d_head, -1, dtype=np.int64)
        for p in range(self.n_pairs):
            out[list(self.pair_dims(p))] = p
        return out

    def pair_index(self) -> Tensor:
        """Dim indices ``[n_pairs, 2]`` to gather a head's pairs: ``x[..., idx]`` -> ``[..., n_pairs, 2]``.

        >>> RopeSpec.from_base(10_000, 8).pair_index().tolist()
        [[0, 4], [1, 5], [2, 6], [3, 7]]
        """
        return torch.tensor([self.pair_dims(p) for p in range(self.n_pairs)], dtype=torch.long)

    def to_dict(self) -> dict:
        """JSON-serialisable form (see :meth:`from_dict`).

        >>> RopeSpec.from_base(100, 4).to_dict()
        {'d_head': 4, 'rotary_dim': 4, 'layout': 'half', 'inv_freq': [[1.0, 0.1]], 'scaling': [1.0]}
        """
        return {
            "d_head": self.d_head,
            "rotary_dim": self.rotary_dim,
            "layout": self.layout,
            "inv_freq": [list(f) for f in self.inv_freq],
            "scaling": list(self.scaling),
        }

    @classmethod
    def from_base(
        cls,
        base: float,
        d_head: int,
        *,
        rotary_dim: int | None = None,
        layout: str = "half",
        n_layers: int = 1,
        scaling: dict | None = None,
    ) -> RopeSpec:
        """The spec of plain (or HF-scaled) RoPE from its base, for activations saved elsewhere.

        Args:
            base: ``rope_theta``.
            d_head: Head dimension.
            rotary_dim: Rotated dims per head (partial rotary); default ``d_head``.
            layout: ``"half"`` (rotate_half: Llama, Qwen, Gemma, NeoX) or ``"interleaved"``
                (= ``"adjacent"``, GPT-J style).
            n_layers: Layers with this RoPE.
            scaling: An HF ``rope_scaling`` / ``rope_parameters`` dict (``{"rope_type": "linear",
                "factor": 4.0}``, ``"llama3"``, ``"yarn"`` ...), computed by transformers.

        >>> RopeSpec.from_base(10_000, 64).wavelengths(0)[[0, -1]].round(1).tolist()
        [6.3, 47117.2]
        """
        layout = {"interleaved": "adjacent"}.get(layout, layout)
        rotary_dim = d_head if rotary_dim is None else int(rotary_dim)
        if rotary_dim % 2 or not 0 < rotary_dim <= d_head:
            raise RopeError(f"rotary_dim must be even and in (0, d_head={d_head}], got {rotary_dim}")
        if not base > 1:
            raise RopeError(f"base must be > 1, got {base}")
        if scaling:
            from transformers import LlamaConfig

            params = {"rope_theta": float(base), **scaling}
            params.setdefault("rope_type", params.pop("type", "default"))
            config = LlamaConfig(head_dim=rotary_dim, hidden_size=rotary_dim, num_attention_heads=1,
                                 num_hidden_layers=n_layers, rope_parameters=params,
                                 max_position_embeddings=max(2048, int(params.get("original_max_position_embeddings", 0)
                                                                       * params.get("factor", 1))))
            inv, att = _hf_inv_freq(config, params, None)
        else:
            inv, att = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim), 1.0
        return cls(d_head=int(d_head), rotary_dim=rotary_dim, layout=layout,
                   inv_freq=(tuple(float(x) for x in inv),) * n_layers, scaling=(float(att),) * n_layers)

    @classmethod
    def from_hf_config(cls, config: object) -> RopeSpec:
        """The spec a Hugging Face config describes: ``rope_theta``, partial rotary, the
        ``rope_type`` scalings transformers implements, and per-layer bases (Gemma-3's local and
        global layers via ``layer_types``). :func:`rope_spec_from_tables` (what massmech uses for a
        loaded model) reads the tables the model really uses instead; tests check they agree.

        Raises:
            RopeError: The config has no RoPE (GPT-2, OPT ...).

        >>> from transformers import Gemma3TextConfig
        >>> [round(b) for b in RopeSpec.from_hf_config(Gemma3TextConfig(num_hidden_layers=6, head_dim=64)).bases()[-2:]]
        [10000, 1000000]
        """
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        params = getattr(text, "rope_parameters", None)
        if not params:
            raise RopeError(f"{type(config).__name__} describes no RoPE (no rope_parameters): no spec")
        d_head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        layer_types = getattr(text, "layer_types", None) or [None] * text.num_hidden_layers
        nested = all(isinstance(v, dict) for v in params.values())
        inv_freq, scaling, rotary_dim = [], [], None
        for lt in layer_types:
            p = params[lt] if nested else params
            inv, att = _hf_inv_freq(text, p, lt if nested else None)
            rotary_dim = 2 * len(inv)
            inv_freq.append(tuple(float(x) for x in inv))
            scaling.append(float(att))
        layout = "adjacent" if getattr(text, "model_type", "") in ("gptj", "codegen") else "half"
        return cls(d_head=int(d_head), rotary_dim=int(rotary_dim), layout=layout, inv_freq=tuple(inv_freq),
                   scaling=tuple(scaling))

    @classmethod
    def from_dict(cls, d: dict) -> RopeSpec:
        """Inverse of :meth:`to_dict`.

        >>> spec = RopeSpec.from_base(10_000, 64, n_layers=3)
        >>> RopeSpec.from_dict(spec.to_dict()) == spec
        True
        """
        return cls(
            d_head=int(d["d_head"]),
            rotary_dim=int(d["rotary_dim"]),
            layout=d["layout"],
            inv_freq=tuple(tuple(float(v) for v in f) for f in d["inv_freq"]),
            scaling=tuple(float(s) for s in d["scaling"]),
        )


def _hf_inv_freq(config: object, params: dict, layer_type: str | None) -> tuple[np.ndarray, float]:
    """``inv_freq`` and attention scaling of one rope-parameter set, as transformers computes them."""
    rope_type = params.get("rope_type", "default")
    d_head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if rope_type == "default":
        partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
        rot = int(d_head * partial)
        rot -= rot % 2
        return float(params["rope_theta"]) ** (-np.arange(0, rot, 2, dtype=np.float64) / rot), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise RopeError(f"rope_type {rope_type!r} is not one transformers implements ({sorted(ROPE_INIT_FUNCTIONS)})")
    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    inv, att = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", **kwargs)
    return inv.double().numpy(), float(att)


def fit_base(freq: np.ndarray, rotary_dim: int) -> float:
    """Least-squares base of ``log freq_i = a - (2i / rotary_dim) * log b``; NaN pairs are ignored.

    Returns NaN when fewer than two usable (finite, positive) frequencies remain.

    >>> round(fit_base(10_000 ** (-np.arange(0, 8, 2) / 8), 8))
    10000
    >>> fit_base(np.array([1.0, np.nan]), 4)
    nan
    """
    freq = np.asarray(freq, dtype=np.float64)
    x = 2 * np.arange(len(freq)) / rotary_dim
    ok = np.isfinite(freq) & (freq > 0)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(x[ok], np.log(freq[ok]), 1)[0]
    return float(np.exp(-slope)) if slope < 0 else float("inf")


def rope_spec_from_tables(
    cos: Float[Tensor, "layer pos rot"],
    sin: Float[Tensor, "layer pos rot"],
    d_head: int,
    *,
    atol: float | None = None,
) -> RopeSpec:
    """Recover a :class:`RopeSpec` from the cos/sin tables a model uses at positions 0..pos-1.

    The layout is read from the column pattern (``half`` repeats the frequencies as two blocks,
    ``adjacent`` repeats each one twice in a row), each pair's frequency is the least-squares
    slope of its unwrapped angle over the positions (every RoPE frequency is below pi rad/token,
    so unwrapping is exact), and the table is then checked to be a rotation
    ``scale * (cos, sin)(p * freq)`` at every position.

    Args:
        cos: Cosine table per layer, positions 0, 1, ... (at least 2 positions).
        sin: Sine table, same shape.
        d_head: Head dimension (to tell partial rotary apart).
        atol: Tolerance of the rotation check, relative to the table's amplitude; default
            ``1e-4`` for fp32/fp64 tables and 4 ulps of the tables' dtype for fp16/bf16 (whose
            frequencies are then only as precise as that dtype: load in fp32 for exact bands).

    Raises:
        RopeError: The tables are not the tables of a rotary embedding.

    >>> angle = torch.arange(16.0)[:, None] * 100.0 ** (-torch.arange(0, 4, 2) / 4)  # [pos, pair]
    >>> angle = torch.cat([angle, angle], -1)[None]  # rotate_half layout, one layer: [1, pos, 4]
    >>> spec = rope_spec_from_tables(angle.cos(), angle.sin(), d_head=4)
    >>> spec.layout, [round(b) for b in spec.bases()], spec.scaling
    ('half', [100], (1.0,))
    """
    if cos.shape != sin.shape or cos.ndim != 3 or cos.shape[1] < 2:
        raise RopeError(f"need cos/sin tables [layer, pos>=2, rot], got {tuple(cos.shape)}")
    eps = torch.finfo(cos.dtype).eps
    if atol is None:
        atol = max(1e-4, 4 * eps)
    same_tol = max(1e-7, eps)  # the two copies of a frequency are computed identically
    cos64, sin64 = cos.double(), sin.double()
    rot = cos.shape[-1]
    half = rot // 2
    if rot % 2:
        raise RopeError(f"rotary dim {rot} is odd")

    def _same(a: Tensor, b: Tensor) -> bool:
        return bool(torch.allclose(a, b, atol=same_tol, rtol=0))

    if _same(cos64[..., :half], cos64[..., half:]) and _same(sin64[..., :half], sin64[..., half:]):
        layout: Layout = "half"
        c, s = cos64[..., :half], sin64[..., :half]  # [layer, pos, n_pairs]
    elif _same(cos64[..., 0::2], cos64[..., 1::2]) and _same(sin64[..., 0::2], sin64[..., 1::2]):
        layout = "adjacent"
        c, s = cos64[..., 0::2], sin64[..., 0::2]
    else:
        raise RopeError("cos table is neither rotate_half nor adjacent-pair layout")

    scale = torch.hypot(c[:, 0], s[:, 0]).mean(-1)  # [layer]
    if (torch.atan2(s[:, 1], c[:, 1]) <= 0).any():
        raise RopeError("a RoPE frequency at position 1 is not in (0, pi): positions must start at 0")
    # Least-squares slope of the unwrapped angle over all positions (steps < pi per token).
    pos = torch.arange(c.shape[1], dtype=torch.float64)
    unwrapped = torch.from_numpy(np.unwrap(torch.atan2(s, c).numpy(), axis=1))  # [layer, pos, n_pairs]
    freq = (pos[None, :, None] * unwrapped).sum(1) / (pos * pos).sum()  # [layer, n_pairs]
    angle = pos[None, :, None] * freq[:, None, :]  # [layer, pos, n_pairs]
    err_c = (c - scale[:, None, None] * torch.cos(angle)).abs().max()
    err_s = (s - scale[:, None, None] * torch.sin(angle)).abs().max()
    if max(err_c, err_s) > atol * float(scale.max()):
        raise RopeError(
            f"cos/sin tables are not a rotation linear in position (max error {max(err_c, err_s):.2e})"
        )
    return RopeSpec(
        d_head=d_head,
        rotary_dim=rot,
        layout=layout,
        inv_freq=tuple(tuple(float(v) for v in row) for row in freq),
        scaling=tuple(float(v) for v in scale),
    )

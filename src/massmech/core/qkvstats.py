"""Token-summed Q/K/V statistics: :class:`QKVStats`, what a capture (or saved activations) gives.

Per ``(site, stage)`` three fp64 tensors ``[layer, head, d_head]`` (sum of squares, sum, max |x|)
and a token count. From them: ``M[l, h, d] = sqrt(sum of squares)``, the paper's L2 norm over
tokens, and the mean and RMS per dim. Saved to and loaded from one ``.npz`` file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from massmech._notebook import html_table, span
from massmech.core.rope import RopeSpec
from massmech.errors import NotCapturedError
from massmech.files.io import atomic_write

Key = tuple[str, str]  # (site, stage)


@dataclass(frozen=True, eq=False, repr=False)
class QKVStats:
    """Token-summed statistics of Q/K/V per (site, stage) -> ``[layer, head, d_head]``.

    Attributes:
        model: Name of the model they come from.
        layers: Layer indices, in the order of the first tensor axis.
        n_tokens: Tokens counted (padding and excluded first tokens are not).
        n_sequences: Sequences seen.
        sumsq, total, max_abs: Per ``(site, stage)``, fp64 tensors ``[layer, head, d_head]``.
        rope: The model's RoPE spec (``None`` for models without RoPE).
        exclude_first_token: Whether each sequence's first token was left out.

    >>> import massmech as mm
    >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], sites=("q", "k"), progress=False)
    >>> stats.n_tokens, stats.keys()[:2], tuple(stats.sumsq[("q", "pre")].shape)
    (4, [('q', 'pre'), ('q', 'post')], (2, 4, 16))
    """

    model: str
    layers: tuple[int, ...]
    n_tokens: int
    n_sequences: int
    sumsq: dict[Key, Tensor]
    total: dict[Key, Tensor]
    max_abs: dict[Key, Tensor]
    rope: RopeSpec | None = None
    exclude_first_token: bool = False
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_activations(cls, activations: Any, **kwargs: Any) -> QKVStats:
        """Statistics from saved Q/K/V tensors: see :func:`massmech.core.activations.from_activations`.

        >>> import torch
        >>> QKVStats.from_activations({"q": torch.ones(2, 5, 4, 16)}, axes="bthd").n_tokens  # [batch, tokens, heads, d]
        10
        """
        from massmech.core.activations import from_activations

        return from_activations(activations, **kwargs)

    @classmethod
    def merge(cls, parts: Sequence[QKVStats]) -> QKVStats:
        """The statistics of all ``parts`` together (captures of one model on disjoint data).

        Sums of squares, sums and token counts add; ``max_abs`` takes the maximum. Equal to one
        capture over the concatenated data up to float rounding.

        >>> import massmech as mm, torch
        >>> model = mm.load_model("tiny-llama")
        >>> a, b = (mm.capture_stats(model, [w], progress=False) for w in ([5, 6, 7], [8, 9]))
        >>> both = mm.capture_stats(model, [[5, 6, 7], [8, 9]], progress=False)
        >>> merged = QKVStats.merge([a, b])
        >>> merged.n_tokens, torch.allclose(merged.norm("k"), both.norm("k"))
        (5, True)
        """
        if not parts:
            raise NotCapturedError("nothing to merge")
        first = parts[0]
        for p in parts[1:]:
            if (p.model, p.layers, p.keys(), p.exclude_first_token) != (first.model, first.layers, first.keys(),
                                                                       first.exclude_first_token):
                raise NotCapturedError(f"cannot merge {p!r} into {first!r}: another model, layers, sites or options")
        keys = first.keys()
        meta = dict(first.meta)
        if all("max_len" in p.meta for p in parts):
            meta["max_len"] = max(int(p.meta["max_len"]) for p in parts)
        return cls(
            model=first.model, layers=first.layers, n_tokens=sum(p.n_tokens for p in parts),
            n_sequences=sum(p.n_sequences for p in parts),
            sumsq={k: sum(p.sumsq[k] for p in parts) for k in keys},
            total={k: sum(p.total[k] for p in parts) for k in keys},
            max_abs={k: torch.stack([p.max_abs[k] for p in parts]).amax(0) for k in keys},
            rope=first.rope, exclude_first_token=first.exclude_first_token, meta=meta,
        )

    def keys(self) -> list[Key]:
        """The captured ``(site, stage)`` pairs.

        >>> import massmech as mm
        >>> mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7]], sites=("k",), progress=False).keys()
        [('k', 'pre'), ('k', 'post')]
        """
        return list(self.sumsq)

    def __repr__(self) -> str:
        d_head = next((t.shape[-1] for t in self.sumsq.values()), None)
        return (
            f"QKVStats({self.model!r}, layers={span(self.layers)}, "
            f"sites={','.join(f'{s}.{st}' for s, st in self.keys())}, tokens={self.n_tokens}, "
            f"sequences={self.n_sequences}, d_head={d_head})"
        )

    def _repr_html_(self) -> str:
        heads = {s: t.shape[1] for (s, _), t in self.sumsq.items()}
        return html_table(
            f"QKVStats: {self.model}",
            {
                "layers": span(self.layers),
                "sites": ", ".join(f"{s}.{st}" for s, st in self.keys()),
                "heads (q / kv)": f"{heads.get('q', '-')} / {heads.get('k', heads.get('v', '-'))}",
                "d_head": next((t.shape[-1] for t in self.sumsq.values()), "-"),
                "tokens": self.n_tokens,
                "sequences": self.n_sequences,
                "first token excluded": self.exclude_first_token,
                "RoPE": repr(self.rope) if self.rope else "none",
            },
        )

    def _get(self, table: dict[Key, Tensor], site: str, stage: str) -> Tensor:
        if (site, stage) not in table:
            raise NotCapturedError(f"({site!r}, {stage!r}) was not captured; captured: {self.keys()}")
        return table[(site, stage)]

    def norm(self, site: str, stage: str = "pre") -> Float[Tensor, "layer head d_head"]:
        """The paper's ``M``: L2 norm over all counted tokens, per (layer, head, dim).

        >>> import massmech as mm
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], progress=False)
        >>> stats.norm("k", "pre").shape   # [layer, kv head, d_head]
        torch.Size([2, 2, 16])
        """
        return self._get(self.sumsq, site, stage).sqrt()

    def mean(self, site: str, stage: str = "pre") -> Float[Tensor, "layer head d_head"]:
        """Mean over counted tokens.

        >>> import massmech as mm
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], progress=False)
        >>> bool((stats.mean("q").abs() <= stats.maxabs("q")).all())
        True
        """
        return self._get(self.total, site, stage) / self.n_tokens

    def rms(self, site: str, stage: str = "pre") -> Float[Tensor, "layer head d_head"]:
        """Root mean square over counted tokens.

        >>> import massmech as mm, torch
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], progress=False)
        >>> torch.allclose(stats.rms("v"), stats.norm("v") / stats.n_tokens ** 0.5)
        True
        """
        return (self._get(self.sumsq, site, stage) / self.n_tokens).sqrt()

    def maxabs(self, site: str, stage: str = "pre") -> Float[Tensor, "layer head d_head"]:
        """Largest |x| over counted tokens.

        >>> import massmech as mm
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], progress=False)
        >>> bool((stats.maxabs("k") <= stats.norm("k")).all())   # one token's |x| <= the L2 norm over tokens
        True
        """
        return self._get(self.max_abs, site, stage)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (site, stage, layer, head, dim) with M, mean, rms, max_abs.

        >>> import massmech as mm
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], sites=("k",), progress=False)
        >>> list(stats.to_frame().columns), len(stats.to_frame())   # 2 stages x 2 layers x 2 heads x 16 dims
        (['site', 'stage', 'layer', 'head', 'dim', 'M', 'mean', 'rms', 'max_abs'], 128)
        """
        frames = [
            grid_frame(
                site, stage, self.layers, "dim",
                {
                    "M": self.norm(site, stage),
                    "mean": self.mean(site, stage),
                    "rms": self.rms(site, stage),
                    "max_abs": self.maxabs(site, stage),
                },
            )
            for site, stage in self.keys()
        ]
        return pd.concat(frames, ignore_index=True)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.npz`` file (atomically: a temp file moved into place).

        >>> import massmech as mm, tempfile, torch
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], progress=False)
        >>> path = stats.save(tempfile.mkdtemp() + "/stats.npz")
        >>> torch.equal(QKVStats.load(path).norm("q"), stats.norm("q"))
        True
        """
        path = Path(path)
        arrays = {}
        for (site, stage), t in self.sumsq.items():
            arrays[f"{site}.{stage}.sumsq"] = t.numpy()
            arrays[f"{site}.{stage}.total"] = self.total[(site, stage)].numpy()
            arrays[f"{site}.{stage}.max_abs"] = self.max_abs[(site, stage)].numpy()
        header = {
            "model": self.model,
            "keys": [list(k) for k in self.keys()],
            "layers": list(self.layers),
            "n_tokens": self.n_tokens,
            "n_sequences": self.n_sequences,
            "rope": self.rope.to_dict() if self.rope else None,
            "exclude_first_token": self.exclude_first_token,
            "meta": self.meta,
        }
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
                np.savez(fh, **arrays)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> QKVStats:
        """Read a file written by :meth:`save`.

        >>> import massmech as mm, tempfile
        >>> stats = mm.capture_stats(mm.load_model("tiny-llama"), [[5, 6, 7, 8]], progress=False)
        >>> QKVStats.load(stats.save(tempfile.mkdtemp() + "/s.npz"))
        QKVStats('tiny-llama', layers=0..1 (2), sites=q.pre,q.post,k.pre,k.post,v.pre, tokens=4, sequences=1, d_head=16)
        """
        with np.load(path) as z:
            header = json.loads(bytes(z["header"]).decode())
            keys = [tuple(k) for k in header["keys"]]
            get = lambda k, s: {key: torch.from_numpy(z[f"{key[0]}.{key[1]}.{s}"]) for key in keys}  # noqa: E731
            sumsq, total, max_abs = get(keys, "sumsq"), get(keys, "total"), get(keys, "max_abs")
        return cls(
            model=header["model"],
            layers=tuple(header["layers"]),
            n_tokens=header["n_tokens"],
            n_sequences=header["n_sequences"],
            sumsq=sumsq,
            total=total,
            max_abs=max_abs,
            rope=RopeSpec.from_dict(header["rope"]) if header["rope"] else None,
            exclude_first_token=header["exclude_first_token"],
            meta=header.get("meta", {}),
        )


def grid_frame(
    site: str, stage: str, layers: Sequence[int], last: str, columns: dict[str, Tensor | np.ndarray]
) -> pd.DataFrame:
    """Tidy rows for one (site, stage) from ``[layer, head, X]`` arrays (X indexed by ``last``).

    >>> grid_frame("q", "pre", [0, 1], "dim", {"M": np.ones((2, 1, 3))}).shape
    (6, 6)
    """
    first = np.asarray(next(iter(columns.values())))
    n_l, n_h, n_x = first.shape
    lay, head, x = np.meshgrid(np.asarray(layers), np.arange(n_h), np.arange(n_x), indexing="ij")
    index = {"site": site, "stage": stage, "layer": lay.ravel(), "head": head.ravel(), last: x.ravel()}
    return pd.DataFrame(index | {k: np.asarray(v).ravel() for k, v in columns.items()})

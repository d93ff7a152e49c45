"""Position shift: how much each RoPE band changes when the same text moves later in the context.

The paper says the values of low-frequency dimensions are "less affected by position
information" (P9). RoPE alone cannot show it: after rotation a logit depends on ``i - j`` only,
so moving every token by the same offset changes nothing. What can change is the model's own
Q and K: prepend ``shift`` tokens of unrelated text, and the same tokens sit ``shift`` positions
later, after a longer context. :func:`shift_changes` runs a text with and without such a prefix
and measures, per layer and band of RoPE pairs, among the text's own tokens:

* ``measure="logit"``: the attention-logit contributions of the band (pairs summed, as in
  :mod:`massmech.core.attribution`) over every causal edge between the text's tokens; ``change``
  is the sum of ``|c_shifted - c|``, ``base`` the sum of ``|c|``;
* ``measure="q"``, ``"k"``: the band's Q or K values before RoPE (after the norm on QK-norm
  models); ``change`` is the sum of squared differences, ``base`` the sum of squares.

Sums (not ratios) are returned so that batches and examples add up; ``change / base`` is the
relative change. The text's first ``skip`` tokens are left out of both sides: without a BOS
token the first token of the unshifted text is the attention sink, which the prefix takes over.
Bands are equal-count thirds of the pairs (``high`` fastest, ``low`` slowest); the unrotated dims
of a partial rotary head are their own band, ``unrotated``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from massmech.core.attribution import UNROTATED, band_logits
from massmech.core.bridge import attention_scaling
from massmech.core.frequency import equal_count_bands
from massmech.core.models import LoadedModel
from massmech.core.rope import RopeSpec
from massmech.errors import InputTypeError

MEASURES = ("logit", "q", "k")
COLUMNS = ["example", "layer", "measure", "band", "change", "base"]


def band_dims(spec: RopeSpec, bands: np.ndarray) -> dict[str, Tensor]:
    """The dims of each band (both coordinates of its pairs; ``unrotated`` for partial rotary).

    >>> spec = RopeSpec.from_base(100, 8, rotary_dim=6)  # pairs (0, 3), (1, 4), (2, 5); dims 6, 7 unrotated
    >>> {b: d.tolist() for b, d in band_dims(spec, np.array(["high", "mid", "low"])).items()}
    {'high': [0, 3], 'mid': [1, 4], 'low': [2, 5], 'unrotated': [6, 7]}
    """
    if np.shape(bands) != (spec.n_pairs,):
        raise InputTypeError(f"a band per pair needs shape ({spec.n_pairs},), got {np.shape(bands)}")
    idx = spec.pair_index()
    out = {str(b): idx[torch.as_tensor(bands == b)].flatten().sort().values for b in dict.fromkeys(bands.tolist())}
    if spec.rotary_dim < spec.d_head:
        out[UNROTATED] = torch.arange(spec.rotary_dim, spec.d_head)
    return out


def shift_changes(
    model: LoadedModel,
    texts: Int[Tensor, "batch pos"],
    prefix: Sequence[int],
    *,
    lead: Sequence[int] = (),
    layers: Iterable[int] | None = None,
    skip: int = 1,
    examples: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per example, layer, measure and band: the change of the text's Q/K and logits when ``prefix`` precedes it.

    Two forward passes without padding: ``lead + text`` and ``lead + prefix + text`` (``lead``: the
    tokenizer's leading special tokens, e.g. BOS). See the module docstring for the measures.

    Args:
        model: A RoPE model.
        texts: Token ids of the texts, all of one length, without special tokens.
        prefix: The tokens that move the texts ``len(prefix)`` positions later.
        lead: Tokens both sequences start with.
        layers: Layers to measure; default all.
        skip: Leading text tokens left out of the measures.
        examples: An id per text (default ``0..batch-1``), the ``example`` column.

    Returns:
        A tidy table with :data:`COLUMNS` (``change`` and ``base`` are sums: see the module docstring).

    Raises:
        InputTypeError: No prefix, or too few text tokens after ``skip``.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> t = shift_changes(model, torch.tensor([model.tokenize("a short text")[0][1:]]), [5, 6, 7], lead=[1], layers=[1])
    >>> sorted(set(t.measure)), sorted(set(t.band)), bool((t.change > 0).all())
    (['k', 'logit', 'q'], ['high', 'low', 'mid'], True)
    """
    if texts.dim() != 2 or texts.shape[1] - skip < 2:
        raise InputTypeError(f"texts must be [batch, pos] with at least {skip + 2} tokens, got {tuple(texts.shape)}")
    if not len(prefix):
        raise InputTypeError("an empty prefix moves nothing: give at least one token")
    spec = model.rope
    layers = list(range(model.info.n_layers)) if layers is None else list(layers)
    examples = list(range(texts.shape[0])) if examples is None else list(examples)
    bands = equal_count_bands(spec.n_pairs, 3)
    dims = band_dims(spec, bands)
    lead_t = torch.tensor([list(lead)] * texts.shape[0], dtype=torch.long).reshape(texts.shape[0], len(lead))
    pre_t = torch.tensor([list(prefix)] * texts.shape[0], dtype=torch.long)
    keys = [(site, stage) for site in ("q", "k") for stage in ("pre", "post")]
    runs = [model.run_sites(torch.cat(parts, 1), keys, layers) for parts in ((lead_t, texts), (lead_t, pre_t, texts))]
    starts = (len(lead) + skip, len(lead) + len(prefix) + skip)
    n = texts.shape[1] - skip
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    rows = []
    for layer in layers:
        (a, b) = ({f"{site}.{stage}": x[:, s : s + n] for (site, stage, la), x in run.items() if la == layer}
                  for run, s in zip(runs, starts, strict=True))
        scale, _ = attention_scaling(model.bridge, layer)
        la, lb = (band_logits(r["q.post"], r["k.post"], spec, layer, bands, scale=scale) for r in (a, b))
        for band in la:
            change = ((lb[band] - la[band]).abs() * causal).sum((-1, -2, -3))  # per example
            base = (la[band].abs() * causal).sum((-1, -2, -3))
            rows += _rows(examples, layer, "logit", band, change, base)
        for site in ("q", "k"):
            xa, xb = a[f"{site}.pre"], b[f"{site}.pre"]
            for band, d in dims.items():
                change = ((xb[..., d] - xa[..., d]) ** 2).sum((1, 2, 3))
                rows += _rows(examples, layer, site, band, change, (xa[..., d] ** 2).sum((1, 2, 3)))
    return pd.DataFrame(rows, columns=COLUMNS)


def _rows(examples: list[int], layer: int, measure: str, band: str, change: Tensor, base: Tensor) -> list[dict]:
    return [dict(example=e, layer=layer, measure=measure, band=band, change=float(c), base=float(b))
            for e, c, b in zip(examples, change.tolist(), base.tolist(), strict=True)]


def relative_changes(table: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """``change / base`` per layer, measure and band (and ``by``), summed over examples first.

    >>> t = pd.DataFrame(dict(example=[0, 1], layer=0, measure="q", band="low", change=[1.0, 3.0], base=[10.0, 30.0]))
    >>> relative_changes(t)[["layer", "measure", "band", "relative"]].to_dict("records")
    [{'layer': 0, 'measure': 'q', 'band': 'low', 'relative': 0.1}]
    """
    keys = [*by, "layer", "measure", "band"]
    out = table.groupby(keys, sort=False, as_index=False)[["change", "base"]].sum()
    return out.assign(relative=out.change / out.base)


def slow_band_least(rel: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per layer and measure (and ``by``): is the slowest third's relative change the smallest of the three thirds?

    Columns ``low``, ``least_other`` (the smaller of ``high`` and ``mid``) and ``slow_least``.

    >>> rel = pd.DataFrame(dict(layer=0, measure="q", band=["high", "mid", "low"], relative=[0.3, 0.2, 0.1]))
    >>> slow_band_least(rel)[["low", "least_other", "slow_least"]].to_dict("records")
    [{'low': 0.1, 'least_other': 0.2, 'slow_least': True}]
    """
    wide = rel[rel.band.isin(["high", "mid", "low"])].pivot_table(
        index=[*by, "measure", "layer"], columns="band", values="relative", sort=False).reset_index()
    wide["least_other"] = wide[["high", "mid"]].min(axis=1)
    wide["slow_least"] = wide.low < wide.least_other
    return wide[[*by, "measure", "layer", "low", "least_other", "slow_least"]]

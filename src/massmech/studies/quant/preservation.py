"""What a quantized variant did to the massive values: recall of the clean model's massive set and the relative error of M on massive vs other dims."""

from __future__ import annotations

import pandas as pd
import torch

from massmech.core.detect import detect_massive, massive_mask
from massmech.core.qkvstats import QKVStats
from massmech.errors import QuantError


# --------------------------------------------------------------------------- measures
def massive_preservation(clean: QKVStats, quantized: QKVStats, *, lam: float = 5.0) -> pd.DataFrame:
    """How well a quantized model keeps the clean model's massive values, per (site, stage).

    Args:
        clean: Statistics of the clean model.
        quantized: Statistics of the quantized model on the same tokens.
        lam: Lambda of the massive rule (per-head mean), applied to both.

    Returns:
        One row per (site, stage) captured in both: ``n_massive`` (clean), ``recall`` (share of the
        clean massive (layer, head, dim) cells that are massive in the quantized model; NaN when the
        clean model has none), ``rel_error_massive`` and ``rel_error_other`` (``|M_q - M| / M``
        averaged over the massive cells and over the rest).

    Raises:
        QuantError: The statistics do not cover the same layers, shapes or token count.
    """
    if clean.layers != quantized.layers or clean.n_tokens != quantized.n_tokens:
        raise QuantError(
            "clean and quantized statistics must come from the same tokens and layers: "
            f"layers {clean.layers} vs {quantized.layers}, tokens {clean.n_tokens} vs {quantized.n_tokens}"
        )
    hits = {
        name: set(map(tuple, t[["site", "stage", "layer", "head", "dim"]].itertuples(index=False, name=None)))
        for name, t in (("clean", detect_massive(clean, lam=lam)), ("quant", detect_massive(quantized, lam=lam)))
    }
    rows = []
    for site, stage in clean.keys():
        if (site, stage) not in quantized.keys():
            continue
        m, mq = clean.norm(site, stage), quantized.norm(site, stage)  # [layer, head, d_head]
        if m.shape != mq.shape:
            raise QuantError(f"({site}, {stage}): shapes {tuple(m.shape)} vs {tuple(mq.shape)}")
        massive = massive_mask(m, lam=lam)
        live = m > 0  # dims that carry no energy at all (e.g. Gemma-3's zeroed pairs) have no relative error
        rel = (mq - m).abs() / m.clamp_min(torch.finfo(m.dtype).tiny)
        mine = {h for h in hits["clean"] if h[:2] == (site, stage)}
        kept = mine & hits["quant"]
        rows.append({
            "site": site,
            "stage": stage,
            "n_massive": len(mine),
            "recall": len(kept) / len(mine) if mine else float("nan"),
            "rel_error_massive": float(rel[massive].mean()) if massive.any() else float("nan"),
            "rel_error_other": float(rel[~massive & live].mean()) if (~massive & live).any() else float("nan"),
        })
    return pd.DataFrame(rows)

"""Perplexity of natural text under a model: the undisturbed language-modelling check of a variant.

>>> import massmech as mm
>>> round(perplexity(mm.load_model("tiny-llama"), [[5, 6, 7, 8]])["nll"], 1)  # a random model: about ln(vocabulary)
5.6
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from massmech.causal.batch import batch_masks
from massmech.core import bridge as _bridge
from massmech.core.models import LoadedModel, pad_batch
from massmech.errors import TaskError


def perplexity(
    model: LoadedModel,
    windows: Sequence[Sequence[int]],
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> dict[str, float]:
    """Perplexity of ``model`` on token windows (e.g. :func:`massmech.core.corpus.default_corpus`).

    Every token after a window's first is predicted from the ones before it; the mean negative
    log-likelihood is taken over all predicted tokens of all windows (fp32 log-softmax).

    Returns:
        ``{"perplexity", "nll", "n_tokens"}``.

    Raises:
        ValueError: No window has two tokens.

    >>> import massmech as mm
    >>> out = perplexity(mm.load_model("tiny-llama"), [[5, 6, 7, 8], [9, 10]])
    >>> out["n_tokens"], round(out["perplexity"])  # a random model: about the vocabulary size
    (4, 257)
    """
    windows = [list(w) for w in windows if len(w) >= 2]
    if not windows:
        raise TaskError("perplexity needs at least one window of two or more tokens")
    device = model.device
    total, count = 0.0, 0
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))  # equal lengths batch together
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="perplexity", disable=not progress):
            rows = [windows[i] for i in order[start : start + batch_size]]
            ids, mask = pad_batch(rows, model.pad_id)  # right padding: positions stay 0..len-1
            mask = mask.long()
            with batch_masks(mask.to(device)):  # one row's logits held at a time, not the batch's
                nll = _bridge.next_token_nll(model.bridge, ids.to(device), mask.to(device))  # [b, pos-1], fp32
            keep = mask[:, 1:].bool().to(device)
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
    nll_mean = total / count
    return {"perplexity": float(np.exp(nll_mean)), "nll": nll_mean, "n_tokens": count}

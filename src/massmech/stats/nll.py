"""Per-token negative log-likelihood, the continuous per-example value of language-modelling studies."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


def token_nll(logits: Tensor, tokens: Tensor) -> Tensor:
    """Negative log-likelihood of each next token, in fp32: ``logits[:, :-1]`` predicts ``tokens[:, 1:]``.

    Args:
        logits: ``[batch, pos, vocab]``.
        tokens: ``[batch, pos]`` token ids.

    Returns:
        ``[batch, pos - 1]``; mask padding yourself (``mask[:, 1:]``).

    >>> import math, torch
    >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
    >>> round(float(token_nll(logits, torch.tensor([[0, 1, 2]]))[0, 0]), 4) == round(math.log(4), 4)
    True
    """
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    return -logp.gather(-1, tokens[:, 1:, None].to(logp.device))[..., 0]

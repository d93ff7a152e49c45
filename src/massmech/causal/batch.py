"""Which positions of the current forward pass are real tokens, and which are the prompt.

Code that transforms activations batch-wide (fake-quantized activations with one scale per
sequence, per-channel KV ranges) must take its statistics from each row's own real tokens, or an
example's result would depend on its batch-mates and on padding. The evaluation loops
(:func:`massmech.causal.evaluate.evaluate`, :func:`~massmech.causal.perplexity.perplexity`, ...)
announce each batch's masks with :func:`batch_masks`; such hooks read them with
:func:`current_masks`. Outside of these loops there is no announcement and every position counts
as a real prompt token (equal-length inputs, as :func:`massmech.capture_stats` uses).

>>> import torch
>>> full = torch.tensor([[True, True, False]])
>>> with batch_masks(full, prompt=torch.tensor([[True, False, False]])):
...     current_masks().prompt.tolist()
[[True, False, False]]
>>> current_masks() is None
True
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from jaxtyping import Bool
from torch import Tensor

from massmech.errors import HookError


@dataclass(frozen=True)
class Masks:
    """``full``: real tokens (prompt and scored answer); ``prompt``: the prompt's tokens.

    >>> import torch
    >>> m = Masks(full=torch.tensor([[True, True, True]]), prompt=torch.tensor([[True, True, False]]))
    >>> m.at("prompt", 1, 3).tolist(), m.at("prompt", 1, 1)  # a one-token decode step: None
    ([[True, True, False]], None)
    """

    full: Bool[Tensor, "batch pos"]
    prompt: Bool[Tensor, "batch pos"]
    #: ``False`` in a pass that continues cached prompts (multiple choice's shared prompt pass):
    #: its rows hold only the options' tokens, so no statistic over a whole sequence can be taken
    whole: bool = True

    def at(self, which: str, batch: int, pos: int) -> Tensor | None:
        """The ``which`` mask for an activation of ``batch`` rows and ``pos`` positions.

        ``None`` for a one-token decode step of a generation (its only position is real); an
        activation of another shape is an error (a hook sees a batch it was not told about), and so
        is any read in a pass whose rows are not whole sequences (``whole=False``).

        >>> import torch
        >>> Masks(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)).at("full", 4, 3)
        Traceback (most recent call last):
        ...
        massmech.errors.HookError: the announced batch masks are (2, 3), the activation is (4, 3)
        """
        if not self.whole:
            raise HookError("a hook reads statistics over whole sequences (W8A8 activations, KV ranges) in a pass that "
                            "continues cached prompts, whose rows hold only the options' tokens: score with "
                            "share_prompt=False")
        mask = getattr(self, which)
        if mask.shape == (batch, pos):
            return mask
        if pos == 1 and mask.shape[0] == batch:
            return None
        raise HookError(f"the announced batch masks are {tuple(mask.shape)}, the activation is ({batch}, {pos})")


_CURRENT: contextvars.ContextVar[Masks | None] = contextvars.ContextVar("massmech_batch_masks", default=None)


@contextlib.contextmanager
def batch_masks(full: Tensor, prompt: Tensor | None = None, *, whole: bool = True) -> Iterator[Masks]:
    """Announce the masks of the forward passes inside the block (see the module docstring);
    ``whole=False``: its rows continue cached prompts (:attr:`Masks.whole`).

    >>> import torch
    >>> with batch_masks(torch.tensor([[1, 1, 0]])) as masks:  # no prompt mask: the prompt is every real token
    ...     masks.prompt.tolist(), current_masks() is masks
    ([[True, True, False]], True)
    """
    full = full.bool()
    masks = Masks(full, full if prompt is None else prompt.bool(), whole)
    token = _CURRENT.set(masks)
    try:
        yield masks
    finally:
        _CURRENT.reset(token)


def current_masks() -> Masks | None:
    """The masks announced for the current forward pass, or ``None`` (every position is real).

    >>> current_masks() is None  # outside an evaluation loop
    True
    """
    return _CURRENT.get()

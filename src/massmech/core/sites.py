"""Sites and stages: where in attention massmech measures.

======  =======  ==========================================================  ==================
site    stage    hook                                                        layout
======  =======  ==========================================================  ==================
q / k   ``pre``  ``blocks.L.attn.hook_q_normed`` with QK-norm (Gemma 3,     ``[b, head, pos, d]``
                 Qwen 3), else ``blocks.L.attn.hook_q`` — the input of RoPE  ``[b, pos, head, d]``
q / k   ``post`` ``blocks.L.attn.hook_rot_q``                                ``[b, pos, head, d]``
q / k   ``raw``  ``blocks.L.attn.hook_q``, QK-norm models only: the projection  ``[b, pos, head, d]``
                 as the weights produce it, before the norm's gain
v       ``pre``  ``blocks.L.attn.hook_v`` (V is never rotated: one stage)   ``[b, pos, head, d]``
======  =======  ==========================================================  ==================

On a QK-norm model ``pre`` is after the norm: its gain (one vector shared by every head) can make
a dim massive that the projection did not, so both are captured (``raw`` and ``pre``, issue 26).
Disruptions act on ``pre`` and ``post`` only.

Models whose QK-norm acts before the heads are split (OLMo-2) give ``hook_q_normed`` flat,
``[b, pos, head * d]``: :func:`to_heads` and :func:`from_heads` turn every layout into
``[b, pos, head, d]`` and back, for every hook massmech registers.

:meth:`massmech.LoadedModel.hook_name` maps a (site, stage, layer) to its hook on a given model.
"""

from __future__ import annotations

from torch import Tensor

SITES = ("q", "k", "v")
STAGES = ("pre", "post")  # where a disruption acts
RAW = "raw"  # Q/K before QK-norm (QK-norm models only)
CAPTURE_STAGES = (RAW, *STAGES)


def to_heads(x: Tensor, heads_first: bool, n_heads: int) -> Tensor:
    """A hooked Q/K/V activation as ``[b, pos, head, d]`` (from heads-first or flat layouts).

    >>> import torch
    >>> tuple(to_heads(torch.zeros(2, 5, 12), False, 3).shape)
    (2, 5, 3, 4)
    """
    if x.dim() == 3:  # [b, pos, head * d]: QK-norm before the split (OLMo-2)
        return x.reshape(*x.shape[:2], n_heads, x.shape[-1] // n_heads)
    return x.transpose(1, 2) if heads_first else x


def from_heads(y: Tensor, like: Tensor, heads_first: bool) -> Tensor:
    """Inverse of :func:`to_heads`: ``y`` (``[b, pos, head, d]``) in the layout of the hooked ``like``.

    >>> import torch
    >>> like = torch.zeros(2, 3, 5, 4)  # heads first: [b, head, pos, d]
    >>> tuple(from_heads(to_heads(like, True, 3), like, True).shape)
    (2, 3, 5, 4)
    """
    if like.dim() == 3:
        return y.reshape(like.shape)
    return y.transpose(1, 2) if heads_first else y


def table_hooks(layer: int) -> tuple[str, str]:
    """The hooks of the cos and sin tables RoPE uses in ``layer`` (``[batch or 1, pos, rotary_dim]``;
    they fire before ``hook_rot_q`` of the same layer).

    >>> table_hooks(3)
    ('blocks.3.attn.hook_cos', 'blocks.3.attn.hook_sin')
    """
    return f"blocks.{layer}.attn.hook_cos", f"blocks.{layer}.attn.hook_sin"

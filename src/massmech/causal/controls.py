"""How a disruption's replacement value and its random controls are chosen, row by row.

* :func:`pooled_values`: the official code's replacement, one scalar per head;
* :func:`matched_dims`: random non-selected dims removing as much variance as the selected ones
  (``control="matched"``), exactly also when the dims share a pooled scalar;
* :func:`counter_uniform`: counter-based random draws, so a row's controls do not depend on its
  batch-mates.

:class:`~massmech.causal.intervention.Intervention` applies them.
"""

from __future__ import annotations

import zlib

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def pooled_values(means: Float[Tensor, "r head d"], sel: Bool[Tensor, "r head d"]) -> Float[Tensor, "r head d"]:
    """The official code's replacement: per head, one scalar, the mean over the selected dims of their means.

    >>> pooled_values(torch.tensor([[[1.0, 3.0, 8.0]]]), torch.tensor([[[True, True, False]]]))
    tensor([[[2., 2., 2.]]])
    """
    pooled = (means * sel).sum(-1, keepdim=True) / sel.sum(-1, keepdim=True).clamp_min(1)
    return pooled.expand_as(means).contiguous()


def matched_dims(
    key: Float[Tensor, "r head d"], removed: Float[Tensor, "r head d"], sel: Bool[Tensor, "r head d"], *,
    pooled: tuple[Tensor, ...] | None = None, slack: float = 0.05, scale: float = 1.0,
    allowed: Bool[Tensor, "r head d"] | None = None,
) -> Bool[Tensor, "r head d"]:
    """Random non-selected dims per head whose removed variance matches that of ``sel``.

    Dims are visited in the random order of ``key`` (``[r, head, d]``) and taken while the total
    stays within ``1 + slack`` of ``scale`` times what the selected dims remove (first fit: a dim that would
    overshoot is skipped, later smaller ones may still fit); then one more dim is taken if it
    brings the total closer to the target (the first in that order, of those closest). None where
    nothing is selected.

    ``removed`` (``[r, head, d]``) is what replacing each dim removes under the condition's
    replacement; with a per-dim value (``mean``, ``zero``, ``calib_mean``) a set removes the sum.
    Under ``pooled_mean`` the dims of a set share one scalar, the mean of their means, so its
    removal is not a sum: pass ``pooled=(sumsq, means, count)`` (per dim the prompt's sum of
    squares and mean, per row the token count) and a set ``S`` is charged exactly
    ``sum(sumsq[S]) - count * sum(means[S])**2 / |S|``, its sum of squares about that scalar.
    When each candidate stands for several dims (whole RoPE pairs), ``pooled`` takes a fourth
    tensor, the dims per candidate, and ``means`` holds each candidate's sum of means.
    ``allowed`` (``[r, head, d]``) limits the candidates (e.g. to the selected dims' RoPE band).

    >>> removed = torch.tensor([[[9.0, 4.0, 3.0, 2.0, 1.0]]])      # dim 0 is the selected one
    >>> sel = torch.tensor([[[True, False, False, False, False]]])
    >>> matched_dims(torch.tensor([[[0.0, 0.1, 0.2, 0.3, 0.4]]]), removed, sel).int()   # 4 + 3 + 2 = 9
    tensor([[[0, 1, 1, 1, 0]]], dtype=torch.int32)
    >>> three = torch.tensor([[[True, False, False]]])                   # 6 fits; 6 + 4 = 10 overshoots 9 x 1.05
    >>> matched_dims(torch.tensor([[[0.0, 0.1, 0.2]]]), torch.tensor([[[9.0, 6.0, 4.0]]]), three).int()  # but is closer
    tensor([[[0, 1, 1]]], dtype=torch.int32)
    """
    target = (removed * sel).sum(-1) * scale  # [r, head]: what the selected dims remove together, scaled
    cap = target * (1 + slack)
    blocked = sel if allowed is None else sel | ~allowed
    order = torch.argsort(key.masked_fill(blocked, float("inf")), dim=-1, stable=True)
    free = ~torch.gather(blocked, -1, order)
    if pooled is None:
        gain = torch.gather(removed, -1, order)
    else:
        sumsq, means = (torch.gather(t, -1, order) for t in pooled[:2])
        size = torch.gather(pooled[3], -1, order) if len(pooled) > 3 else torch.ones_like(sumsq)
        count = pooled[2].reshape(-1, 1)  # [r, 1]: tokens per row
        ss, mu, n = torch.zeros_like(target), torch.zeros_like(target), torch.zeros_like(target)
    total = torch.zeros_like(target)
    take = torch.zeros_like(free)
    for j in range(order.shape[-1]):  # d_head steps, each over every (row, head) at once
        if pooled is None:
            after = total + gain[..., j]
        else:
            after = (ss + sumsq[..., j]) - count * (mu + means[..., j]) ** 2 / (n + size[..., j])
        ok = free[..., j] & (after <= cap) & (target > 0)
        total = torch.where(ok, after, total)
        if pooled is not None:
            ss, mu, n = ss + sumsq[..., j] * ok, mu + means[..., j] * ok, n + size[..., j] * ok
        take[..., j] = ok
    # then at most one more dim, the one (first in the random order) bringing the total closest to
    # the target, if it does: first fit alone stops short where every dim left would overshoot the cap
    left = free & ~take & (target > 0)[..., None]
    if pooled is None:
        after = total[..., None] + gain
    else:
        after = (ss[..., None] + sumsq) - count[..., None] * (mu[..., None] + means) ** 2 / (n[..., None] + size)
    miss = (after - target[..., None]).abs().masked_fill(~left, float("inf"))
    best = miss.argmin(-1, keepdim=True)  # the first of equal misses
    better = torch.gather(miss, -1, best).squeeze(-1) < (total - target).abs()
    take.scatter_(-1, best, torch.gather(take, -1, best) | better[..., None])
    out = torch.zeros_like(sel)
    return out.scatter(-1, order, take)


def counter_uniform(seed: int, row: Tensor, layer: int, site: str, shape: tuple[int, int]) -> Float[Tensor, "r head d"]:
    """Deterministic uniform draws ``[rows, head, dim]`` from (seed, row id, layer, site, head, dim).

    Counter-based, so a row's draws do not depend on how rows are batched.

    >>> a = counter_uniform(0, torch.tensor([3, 7]), 1, "k", (2, 4))
    >>> torch.equal(a[1], counter_uniform(0, torch.tensor([7]), 1, "k", (2, 4))[0]), a.shape
    (True, torch.Size([2, 2, 4]))
    """
    salt = zlib.crc32(f"{seed}/{layer}/{site}".encode())
    h, d = shape
    cell = torch.arange(h * d, dtype=torch.int64).view(1, h, d)
    x = (row.to(torch.int64).view(-1, 1, 1) * 1_000_003 + cell * 7_919 + salt) & 0xFFFFFFFF
    for _ in range(3):  # 32-bit integer mixing (a variant of the murmur3 finaliser)
        x = ((x >> 16) ^ x) * 0x45D9F3B & 0xFFFFFFFF
    x = (x >> 16) ^ x
    return x.double() / 2**32

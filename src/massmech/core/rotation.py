"""RoPE as the model applies it in one forward pass: rotate activations with its own cos/sin tables.

A :class:`Rotation` holds the tables a model's attention used for the rows and positions of the
current batch (``blocks.L.attn.hook_cos`` / ``hook_sin``, :func:`massmech.core.sites.table_hooks`;
per row, so left padding and generation steps carry their true positions) and applies them, or
their inverse, to ``[rows, pos, head, d]`` activations. It is the same formula as Hugging Face's
``apply_rotary_pos_emb``: ``x * cos + rotate(x) * sin`` on the first ``rotary_dim`` dims, with
``rotate`` the ``half`` (``rotate_half``) or ``adjacent`` (GPT-J) pairing of
:class:`~massmech.core.rope.RopeSpec`; dims beyond ``rotary_dim`` (partial rotary) are left as they
are. The inverse divides by the tables' amplitude (``cos² + sin²``, 1 unless the RoPE is scaled),
so ``undo(apply(x)) == x`` up to rounding.

>>> import torch
>>> angle = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])  # one row, positions 0 and 1, one pair (half layout)
>>> rot = Rotation(angle.cos(), angle.sin(), "half")
>>> x = torch.tensor([1.0, 0.0]).expand(1, 2, 1, 2)  # [rows, pos, head, d]
>>> [round(v, 3) for v in rot.apply(x)[0, 1, 0].tolist()]  # (cos 1, sin 1)
[0.54, 0.841]
>>> bool(torch.allclose(rot.undo(rot.apply(x)), x))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from massmech.errors import RopeError


def rotate_pairs(x: Float[Tensor, "... rot"], layout: str) -> Float[Tensor, "... rot"]:
    """Each pair ``(a, b)`` of the rotated dims as ``(-b, a)``: a quarter turn, in either layout.

    >>> import torch
    >>> rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0]), "half").tolist()  # pairs (0, 2), (1, 3)
    [-3.0, -4.0, 1.0, 2.0]
    >>> rotate_pairs(torch.tensor([1.0, 2.0, 3.0, 4.0]), "adjacent").tolist()  # pairs (0, 1), (2, 3)
    [-2.0, 1.0, -4.0, 3.0]
    """
    if layout == "half":
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)
    if layout == "adjacent":
        return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    raise RopeError(f"layout must be 'half' or 'adjacent', got {layout!r}")


@dataclass(frozen=True)
class Rotation:
    """The rotation of one forward pass: cos/sin per row and position (see the module docstring).

    Attributes:
        cos: The cosine table, ``[rows, pos, rotary_dim]``.
        sin: The sine table, same shape.
        layout: ``"half"`` or ``"adjacent"``.

    >>> import torch
    >>> rot = Rotation(torch.zeros(2, 5, 4), torch.ones(2, 5, 4), "adjacent")  # a quarter turn everywhere
    >>> rot.apply(torch.tensor([[1.0, 0.0, 0.0, 2.0]]).expand(2, 1, 4))[0, 0, 0].tolist()  # [rows, head, d] in
    [0.0, 1.0, -2.0, 0.0]
    """

    cos: Float[Tensor, "rows pos rot"]
    sin: Float[Tensor, "rows pos rot"]
    layout: str

    def __post_init__(self) -> None:
        if self.cos.shape != self.sin.shape or self.cos.ndim != 3 or self.cos.shape[-1] % 2:
            raise RopeError(f"cos/sin tables must be [rows, pos, even rotary_dim], got {tuple(self.cos.shape)} "
                            f"and {tuple(self.sin.shape)}")

    def _turn(self, x: Tensor, sign: float) -> Tensor:
        if x.ndim == 3:  # [rows, head, d]: the same vector at every position
            x = x[:, None].expand(-1, self.cos.shape[1], -1, -1)
        rot = self.cos.shape[-1]
        if x.shape[0] != self.cos.shape[0] or x.shape[1] != self.cos.shape[1] or x.shape[-1] < rot:
            raise RopeError(f"activations {tuple(x.shape)} do not fit the tables {tuple(self.cos.shape)}")
        c, s = self.cos[:, :, None].float(), self.sin[:, :, None].float()  # [rows, pos, 1, rot]
        head = x[..., :rot].float()
        turned = head * c + sign * rotate_pairs(head, self.layout) * s
        if sign < 0:
            turned = turned / (c * c + s * s)
        return torch.cat([turned, x[..., rot:].float()], dim=-1)

    def apply(self, x: Float[Tensor, "rows *pos head d"]) -> Float[Tensor, "rows pos head d"]:
        """RoPE at each row's positions, in fp32; a ``[rows, head, d]`` input is placed at every position.

        >>> import torch
        >>> rot = Rotation(torch.ones(1, 3, 2), torch.zeros(1, 3, 2), "half")  # angle 0: identity
        >>> tuple(rot.apply(torch.ones(1, 4, 2)).shape)  # [rows, head, d] -> [rows, pos, head, d]
        (1, 3, 4, 2)
        """
        return self._turn(x, 1.0)

    def undo(self, x: Float[Tensor, "rows pos head d"]) -> Float[Tensor, "rows pos head d"]:
        """The inverse of :meth:`apply`: the values before RoPE, in fp32.

        >>> import torch
        >>> rot = Rotation(torch.zeros(1, 1, 2), torch.ones(1, 1, 2), "half")  # a quarter turn
        >>> rot.undo(torch.tensor([[[[0.0, 1.0]]]])).tolist()
        [[[[1.0, 0.0]]]]
        """
        return self._turn(x, -1.0)

    def rows(self, index: Tensor) -> Rotation:
        """The tables of some rows (a table of one row serves every row).

        >>> import torch
        >>> Rotation(torch.ones(1, 3, 2), torch.zeros(1, 3, 2), "half").rows(torch.tensor([4, 7])).cos.shape[0]
        2
        """
        if self.cos.shape[0] == 1:
            size = (len(index), -1, -1)
            return Rotation(self.cos.expand(size), self.sin.expand(size), self.layout)
        return Rotation(self.cos[index], self.sin[index], self.layout)

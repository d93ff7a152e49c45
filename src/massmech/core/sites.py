"""Sites and stages: where in attention massmech measures.

======  =======  ==========================================================  ==================
site    stage    hook                                                        layout
======  =======  ==========================================================  ==================
q / k   ``pre``  ``blocks.L.attn.hook_q_normed`` with QK-norm (Gemma 3,     ``[b, head, pos, d]``
                 Qwen 3), else ``blocks.L.attn.hook_q`` — the input of RoPE  ``[b, pos, head, d]``
q / k   ``post`` ``blocks.L.attn.hook_rot_q``                                ``[b, pos, head, d]``
v       ``pre``  ``blocks.L.attn.hook_v`` (V is never rotated: one stage)   ``[b, pos, head, d]``
======  =======  ==========================================================  ==================

:meth:`massmech.LoadedModel.hook_name` maps a (site, stage, layer) to its hook on a given model.
"""

from __future__ import annotations

SITES = ("q", "k", "v")
STAGES = ("pre", "post")

"""Figure: 3D bars of |Q| and |K| over token x dim for one head (layer 1, first BBC window)."""

from pathlib import Path

import torch
from _common import analysis, main

from massmech import plotting

LAYER, KV_HEAD, TOKENS = 1, 0, 24


def build(spec: str, out: Path) -> Path:
    a = analysis(spec)
    path = out / f"bars3d_{spec}"
    plotting.qk_head_bars(a.model, torch.tensor([a.windows[0][:TOKENS]]), layer=LAYER, kv_head=KV_HEAD, out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

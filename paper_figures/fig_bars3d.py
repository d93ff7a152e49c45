"""Figure: 3D bars of |Q| and |K| over token x dim for one head (layer 1, first BBC window)."""

from pathlib import Path

import torch
from _common import analysis, main

from massmech import plotting

LAYER, KV_HEAD, TOKENS = 1, 0, 24


def build(spec: str, out: Path) -> Path:
    a = analysis(spec)
    ids = torch.tensor([a.windows[0][:TOKENS]])
    acts = a.model.run_sites(ids, [("q", "pre"), ("k", "pre")], layers=[LAYER])
    q_head = KV_HEAD * (a.model.info.n_heads // a.model.info.n_kv_heads)
    path = out / f"bars3d_{spec}"
    plotting.token_dim_bars(
        {f"Q head {q_head}": acts[("q", "pre", LAYER)][0, :, q_head], f"K head {KV_HEAD}": acts[("k", "pre", LAYER)][0, :, KV_HEAD]},
        title=f"{spec}, layer {LAYER}, pre-RoPE",
        out=path,
    )
    plotting.plt.close("all")
    return path


if __name__ == "__main__":
    main(build, __doc__)

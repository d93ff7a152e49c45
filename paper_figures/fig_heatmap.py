"""Figure: M (head x dim) for Q and K at the first, middle and last layer, band edges drawn."""

from pathlib import Path

from _common import analysis, main

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    a = analysis(spec)
    path = out / f"heatmap_{spec}"
    plotting.massive_heatmap(a.stats, a.layers, out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

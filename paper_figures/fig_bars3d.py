"""Figure: 3D bars of |Q| and |K| over token x dim for one head (the analyze run's bars.parquet)."""

from pathlib import Path

from _common import analysis, main

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"bars3d_{spec}"
    plotting.bars_from_frame(analysis(spec).bars, out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

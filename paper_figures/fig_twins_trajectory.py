"""Figure: the RoPE, absolute-position and NoPE twins over training (max/mean of M, massive count, slow-half share)."""

from pathlib import Path

from _common import twins_main, twins_tables

from massmech import plotting

TABLE = "trajectory"


def build(out: Path) -> Path:
    path = out / "twins_trajectory"
    plotting.twins_trajectory(twins_tables()[TABLE], out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    twins_main(build, __doc__)

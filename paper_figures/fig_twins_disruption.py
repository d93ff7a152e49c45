"""Figure: the RoPE twin with its top-k Q/K dims per head replaced by their mean, vs k random dims."""

from pathlib import Path

from _common import twins_main, twins_tables

from massmech import plotting

TABLE = "disruption"


def build(out: Path) -> Path:
    path = out / "twins_disruption"
    plotting.twins_disruption(twins_tables()[TABLE], out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    twins_main(build, __doc__)

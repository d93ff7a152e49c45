"""Figure: final energy share per RoPE pair in the twins, and against wavelength / context in the RoPE variants."""

from pathlib import Path

from _common import twins_main, twins_tables

from massmech import plotting

TABLE = "bands"


def build(out: Path) -> Path:
    path = out / "twins_bands"
    plotting.twins_bands(twins_tables()[TABLE], out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    twins_main(build, __doc__)

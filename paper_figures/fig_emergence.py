"""Figure: low-band energy fraction and massive count per layer (Q, K, V; pre and post RoPE)."""

from pathlib import Path

from _common import analysis, main

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"emergence_{spec}"
    plotting.emergence(analysis(spec).freq, out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

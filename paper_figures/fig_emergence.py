"""Figure: Q/K concentration beyond V per layer with the emergence layer, and the massive count per layer."""

from pathlib import Path

from _common import analysis, main

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"emergence_{spec}"
    a = analysis(spec)
    plotting.emergence(a.freq, a.emergence, out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

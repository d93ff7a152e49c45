"""Figure: per-pair energy share against wavelength (log axis), context length marked."""

from pathlib import Path

from _common import analysis, main

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    a = analysis(spec)
    path = out / f"spectrum_{spec}"
    plotting.spectrum(a.freq, a.layers, out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

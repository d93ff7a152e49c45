"""Figure: accuracy when only the early, middle or late third of the layers is disrupted."""

from pathlib import Path

from _common import main, sweep_table

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"ablation_layers_{spec}"
    plotting.ablation_layers(sweep_table("layers", spec), out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

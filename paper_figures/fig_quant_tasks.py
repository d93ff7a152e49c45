"""Figure (the paper's quantization figure): accuracy on parametric vs contextual tasks per weight quantizer, 95% CIs."""

from pathlib import Path

from _common import main, quant_table

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"quant_tasks_{spec}"
    plotting.quant_tasks(quant_table(spec), out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

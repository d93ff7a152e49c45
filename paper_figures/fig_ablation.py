"""Figure (the paper's main result): accuracy per task, baseline vs massive-disrupted vs controls, with 95% CIs."""

from pathlib import Path

from _common import main, sweep_table

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"ablation_{spec}"
    plotting.ablation_bars(sweep_table("main", spec), out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

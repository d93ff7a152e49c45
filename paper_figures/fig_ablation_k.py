"""Figure: accuracy against k (top-k dims per head disrupted), massive vs lowest-norm control."""

from pathlib import Path

from _common import main, sweep_table

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"ablation_k_{spec}"
    plotting.ablation_curve(sweep_table("k", spec), out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

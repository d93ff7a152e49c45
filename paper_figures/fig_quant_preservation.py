"""Figure: what each quantizer does to the massive values (recall of the clean massive set; relative error of M on massive vs other K dims)."""

from pathlib import Path

from _common import main, quant_table

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"quant_preservation_{spec}"
    plotting.quant_preservation(quant_table(spec), out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

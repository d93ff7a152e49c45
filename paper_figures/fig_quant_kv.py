"""Figure: KV-cache quantization, per-token vs per-channel vs massive-aware keys: perplexity and contextual accuracy by bits."""

from pathlib import Path

from _common import main, quant_table

from massmech import plotting


def build(spec: str, out: Path) -> Path:
    path = out / f"quant_kv_{spec}"
    plotting.quant_kv(quant_table(spec), out=path)
    plotting.close_all()
    return path


if __name__ == "__main__":
    main(build, __doc__)

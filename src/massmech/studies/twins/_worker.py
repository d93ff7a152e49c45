"""Worker process of :func:`massmech.studies.twins.train.train_all`: ``python -m massmech.studies.twins._worker OUT VARIANT [DEVICE]``."""

import json
import sys
from pathlib import Path

from massmech.studies.twins.config import TwinsConfig
from massmech.studies.twins.train import train_variant

if __name__ == "__main__":
    out, name = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else None
    cfg = TwinsConfig.from_dict(json.loads((Path(out) / "config.json").read_text()))
    train_variant(cfg, name, out, device=device, progress=False)

"""Runners behind the CLI: each takes a frozen config, writes a complete run folder, returns a summary.

A run folder always holds ``manifest.json`` (config, model, seed, versions, git hash) and
``summary.json``; it is built in a temporary folder and moved into place when complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from massmech.capture import capture_stats
from massmech.corpus import default_corpus
from massmech.detect import detect_massive, massive_by_layer
from massmech.models import DEFAULT_MODEL, LoadedModel, load_model
from massmech.runs import atomic_run_dir, check_writable, manifest, write_json


@dataclass(frozen=True)
class DetectConfig:
    """Capture Q/K/V statistics on the default corpus and detect massive values.

    Attributes:
        model: Model spec (see :func:`massmech.load_model`).
        n_tokens: Tokens of BBC news to capture over.
        seq_len: Tokens per window (one article each).
        batch_size: Windows per forward pass.
        rule, lam, k, mean: Detection rule (see :func:`massmech.detect_massive`).
        exclude_first_token: Leave each window's first token out of the statistics.
        seed: Order of the corpus articles.
    """

    model: str = DEFAULT_MODEL
    n_tokens: int = 4096
    seq_len: int = 512
    batch_size: int = 4
    rule: str = "lambda"
    lam: float = 5.0
    k: int = 4
    mean: str = "head"
    exclude_first_token: bool = False
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DetectConfig:
        return cls(**json.loads(text))


def run_detect(
    config: DetectConfig, out: str | os.PathLike, *, model: LoadedModel | None = None, progress: bool = True
) -> dict:
    """Run :class:`DetectConfig` and write ``out/`` (stats.npz, stats.parquet, massive.parquet,
    by_layer.csv, manifest.json, summary.json).

    Returns:
        The summary: per site, ``massive_count`` and ``massive_low_half_share`` (pooled over
        layers, at the pre-RoPE stage), plus per-layer rows and ``out_dir``.
    """
    out = check_writable(out)
    torch.manual_seed(config.seed)
    model = model or load_model(config.model)
    windows = default_corpus(model, n_tokens=config.n_tokens, seq_len=config.seq_len, seed=config.seed)
    stats = capture_stats(
        model,
        windows,
        batch_size=config.batch_size,
        exclude_first_token=config.exclude_first_token,
        progress=progress,
    )
    massive = detect_massive(stats, rule=config.rule, lam=config.lam, k=config.k, mean=config.mean)
    by_layer = massive_by_layer(massive, stats)
    summary = {"model": model.info.name, "n_tokens": stats.n_tokens, "sites": {}}
    for (site, stage), grp in by_layer.groupby(["site", "stage"], sort=False):
        n, low = int(grp.n_massive.sum()), grp.n_low_half.sum()
        summary["sites"][f"{site}.{stage}"] = {
            "massive_count": n,
            "massive_low_half_share": (float(low / n) if n and site != "v" and model.has_rope else None),
            "first_layer_with_massive": (int(grp.layer[grp.n_massive > 0].min()) if n else None),
        }
    with atomic_run_dir(out) as tmp:
        stats.save(tmp / "stats.npz")
        stats.to_frame().to_parquet(tmp / "stats.parquet", index=False)
        massive.to_parquet(tmp / "massive.parquet", index=False)
        by_layer.to_csv(tmp / "by_layer.csv", index=False)
        write_json(tmp / "manifest.json", manifest(config, model_info=model.info_dict(), seed=config.seed))
        write_json(tmp / "summary.json", summary | {"by_layer": by_layer.to_dict(orient="records")})
    summary["out_dir"] = str(Path(out).resolve())
    return summary

"""The twins study: train (or resume) the twins, then measure where massive values come from.

For every variant and checkpoint, on held-out BBC text (:func:`checkpoint_tables`):

* per (site, layer): the largest and mean per-head ratio ``max_d M / mean_d M`` of Q, K, V
  (pre-RoPE), the count of massive dims under the lambda rule, the slow-half energy share, the
  peak pair (pairs indexed as the RoPE twin's) and, for RoPE variants, the peak pair's wavelength
  and the energy-weighted geometric mean wavelength, both relative to the training context;
* natural-text loss and in-context accuracy (``repeat``, ``kv``, ``passkey``) with 95% CIs.

At the final checkpoint of the RoPE twin (:func:`disruption_table`): the same metrics with its
top-``k`` Q/K dims per head replaced by their mean over the sequence, and with ``k`` random
non-selected dims per head (the control). :func:`run_twins` writes it all, plus figures and a
summary and ``checkpoints.json`` (variant -> step -> checkpoint folder, each with its own
``manifest.json``), to ``OUT/analysis`` (replaced atomically); the checkpoints stay in
``OUT/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from massmech.causal.disruption import Disruption
from massmech.causal.intervention import Intervention
from massmech.core.capture import capture_stats
from massmech.core.detect import massive_mask
from massmech.core.frequency import pair_energy
from massmech.core.models import LoadedModel, wrap
from massmech.core.qkvstats import QKVStats
from massmech.core.rope import RopeSpec
from massmech.errors import RunNotFoundError
from massmech.infra.cells import CellStore, cell_key
from massmech.infra.io import sha256_file, write_json
from massmech.infra.runs import atomic_run_dir, manifest, open_study_dir, study_lock
from massmech.infra.study import CellSpec, Context, compute_cells
from massmech.stats import describe, token_nll
from massmech.studies.twins.config import TWINS, TwinsConfig, Variant
from massmech.studies.twins.data import KINDS, TwinCorpus, eval_set
from massmech.studies.twins.model import TwinLlamaForCausalLM, load_twin
from massmech.studies.twins.seeds import matched_accuracy, seed_table
from massmech.studies.twins.train import (
    checkpoint_dirs,
    log_table,
    prepare,
    resolve_device,
    train_all,
)

SITES = ("q", "k", "v")


def wrap_twin(model: TwinLlamaForCausalLM, tokenizer, name: str) -> LoadedModel:
    """A twin as a :class:`~massmech.core.models.LoadedModel` (bridged as Llama)."""
    return wrap(model.eval(), tokenizer, name=name)


# --------------------------------------------------------------------------- statistics
def stats_tables(stats: QKVStats, spec: RopeSpec, *, lam: float, context: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-(site, layer) concentration metrics and per-(site, layer, pair) energy shares.

    Args:
        stats: Pre-RoPE statistics of one checkpoint.
        spec: RoPE spec whose pairs index the dims (the variant's own, or the RoPE twin's for the
            twins without rotation, which share its layout).
        lam: Lambda of the massive rule (per-head mean).
        context: Training context (wavelengths are reported relative to it).
    """
    layer_rows = []
    pairs = pair_energy(dataclasses.replace(stats, rope=spec))
    pairs = pairs[pairs.stage == "pre"]
    prof = pairs.groupby(["site", "layer", "pair"], as_index=False).agg(share=("share", "mean"), wavelength=("wavelength", "first"))
    half = spec.n_pairs // 2
    for site in SITES:
        m = stats.norm(site, "pre")  # [layer, head, d_head]
        ratio = m.max(-1).values / m.mean(-1)  # [layer, head]
        n_massive = massive_mask(m, lam=lam).sum((-2, -1))  # [layer]
        for li, layer in enumerate(stats.layers):
            p = prof[(prof.site == site) & (prof.layer == layer)]
            peak = p.loc[p.share.idxmax()]
            log_rel = np.log(p.wavelength.to_numpy() / context)
            centroid = float(np.exp((p.share.to_numpy() * log_rel).sum() / p.share.sum()))
            layer_rows.append({
                "site": site,
                "layer": layer,
                "max_ratio": float(ratio[li].max()),
                "mean_ratio": float(ratio[li].mean()),
                "n_massive": int(n_massive[li]),
                "slow_half_share": float(p.share[p.pair >= half].sum() / p.share.sum()),
                "peak_pair": int(peak.pair),
                "peak_wavelength_over_context": float(peak.wavelength) / context,
                "centroid_wavelength_over_context": centroid,  # energy-weighted geometric mean
            })
    return pd.DataFrame(layer_rows), prof.rename(columns={"share": "energy_share"})


def _scored(logits: Tensor, tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: mean NLL and accuracy (greedy == target) over the scored tokens."""
    # logits [b, pos, vocab] predicts tokens[:, 1:]
    target, m = tokens[:, 1:], mask[:, 1:].float()
    nll = token_nll(logits, tokens)  # [b, pos-1], fp32
    right = (logits[:, :-1].argmax(-1) == target).float()
    n = m.sum(1).clamp_min(1)
    return (nll * m).sum(1) / n, (right * m).sum(1) / n


def prompt_mask(name: str, mask: Bool[Tensor, "n pos"]) -> Bool[Tensor, "n pos"]:
    """The positions before each row's first scored token (its prompt); natural text is all prompt.

    >>> prompt_mask("copy", torch.tensor([[False, False, True, True]])).tolist()
    [[True, True, False, False]]
    """
    if name == "natural":
        return torch.ones_like(mask)
    first = mask.float().argmax(1, keepdim=True)  # [n, 1]
    return torch.arange(mask.shape[1]).view(1, -1) < first


def row_values(
    forward: Callable[..., Tensor],
    sets: dict[str, tuple[Int[Tensor, "n pos"], Bool[Tensor, "n pos"]]],
    *,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per evaluation row: natural-text loss (``"natural_loss"``) or in-context accuracy
    (``"<kind>_accuracy"``), in the order of the rows.

    Args:
        forward: ``forward(tokens, prompt, rows)``: token ids ``[batch, pos]``, the batch's prompt
            mask (:func:`prompt_mask`) and stable row ids -> logits ``[batch, pos, vocab]``.
        sets: Name -> (tokens, scored mask); ``"natural"`` is scored by loss, the rest by accuracy.
    """
    out = {}
    with torch.inference_mode():
        for k, (name, (toks, mask)) in enumerate(sets.items()):
            prompt = prompt_mask(name, mask)
            vals = []
            for i in range(0, len(toks), batch_size):
                rows = torch.arange(i, min(i + batch_size, len(toks))) + 1_000_000 * k  # one id per example
                logits = forward(toks[i : i + batch_size], prompt[i : i + batch_size], rows)  # on the model's device
                t, m = toks[i : i + batch_size].to(logits.device), mask[i : i + batch_size].to(logits.device)
                nll, acc = _scored(logits, t, m)
                vals.append((nll if name == "natural" else acc).cpu())
            out["natural_loss" if name == "natural" else f"{name}_accuracy"] = torch.cat(vals).double().numpy()
    return out


def score(
    values: dict[str, np.ndarray], *, baseline: dict[str, np.ndarray] | None = None, seed: int = 0
) -> pd.DataFrame:
    """Mean of each metric with a 95% bootstrap CI over rows (and, given the same rows under a
    baseline, the paired change with its CI).

    Returns:
        One row per metric: ``metric, value, ci_low, ci_high, n`` (+ ``delta, delta_ci_low,
        delta_ci_high``).
    """
    rows = []
    for metric, v in values.items():
        stats = describe(v, baseline=None if baseline is None else baseline[metric], seed=seed)
        rows.append({"metric": metric, "value": stats.pop("mean"), **stats})
    return pd.DataFrame(rows)


def eval_sets(cfg: TwinsConfig, corpus: TwinCorpus, context: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Held-out natural windows and in-context sequences at ``context`` tokens."""
    n_nat = max(1, cfg.analysis_tokens // context)
    sets = {"natural": eval_set(corpus, "natural", n=n_nat, length=context, seed=cfg.seed)}
    for kind in KINDS:
        sets[kind] = eval_set(corpus, kind, n=cfg.eval_examples, length=context, seed=cfg.seed)
    return sets


def _hf_forward(model: TwinLlamaForCausalLM) -> Callable[..., Tensor]:
    return lambda x, prompt, rows: model(x.to(model.device)).logits


def _bridge_forward(lm: LoadedModel, iv: Intervention | None = None) -> Callable[..., Tensor]:
    """Logits through the bridge; with ``iv``, each batch's prompt and row ids are set first."""
    def forward(x: Tensor, prompt: Tensor, rows: Tensor) -> Tensor:
        if iv is not None:
            iv.set_batch(torch.zeros(len(x), dtype=torch.long), prompt, torch.ones_like(prompt), row_ids=rows)
        return lm.bridge(x.to(lm.info.device), return_type="logits")

    return forward


# --------------------------------------------------------------------------- tables
def _checkpoint_id(folder: Path) -> str:
    """sha256 of a checkpoint's weights: a retrained checkpoint at the same step is another cell."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        sha256_file(f, h)
    return h.hexdigest()[:20]


def _analyse_checkpoint(cfg: TwinsConfig, v: Variant, step: int, folder: Path, tokenizer, sets: dict,
                        spec_of_twin, device: str) -> dict[str, pd.DataFrame]:
    """Trajectory, band and score rows of one checkpoint (one cell of the twins study)."""
    ctx = cfg.context_of(v)
    model = load_twin(folder).to(device).eval()
    lm = wrap_twin(model, tokenizer, f"twin-{v.name}@{step}")
    stats = capture_stats(lm, sets["natural"][0], sites=SITES, stages=("pre",), batch_size=8, progress=False)
    # non-RoPE twins are indexed by the RoPE twin's pairs, so their bands line up with it
    spec = lm.rope_or_none or spec_of_twin()
    lt, pt = stats_tables(stats, spec, lam=cfg.lam, context=ctx)
    keys = {"variant": v.name, "mechanism": v.mechanism, "context": ctx,
            "rope_theta": cfg.theta_of(v) if v.mechanism == "rope" else np.nan, "step": step}
    if lm.rope_or_none is None:
        pt = pt.assign(wavelength=np.nan)
        lt = lt.assign(peak_wavelength_over_context=np.nan, centroid_wavelength_over_context=np.nan)
    return {"trajectory": lt.assign(**keys), "bands": pt.assign(**keys),
            "scores": score(row_values(_hf_forward(model), sets), seed=cfg.seed).assign(**keys)}


class TwinCheckpoints:
    """The twins' checkpoint analyses as a study (:mod:`massmech.infra.study`): one cell per
    (variant, step), grouped by variant. ``config`` is ``{"cfg", "out", "device"}``."""

    name = "twins"
    kind = "twins"

    def plan(self, config: dict, ctx: Context) -> list[CellSpec]:
        cfg, out = config["cfg"], Path(config["out"])
        # the weights' hash carries the training; of the config, drop what only shapes the training schedule
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("steps", "checkpoints", "variants", "preset")}
        cells = []
        for v in cfg.variants:
            for step, folder in sorted(checkpoint_dirs(out, v).items()):
                parts = {"config": shared, "variant": v.name, "step": step, "weights": _checkpoint_id(folder)}
                cells.append(CellSpec(cell_key(self.name, parts), parts, group=v.name, unit=f"{v.name}@{step}",
                                      payload=(v.name, step, str(folder))))
        return cells

    def run_unit(self, config: dict, cells, ctx: Context) -> dict:
        cfg, out, device = config["cfg"], Path(config["out"]), config["device"]
        tok, corpus = ctx.cached("prepared", lambda: prepare(cfg, out))

        def spec_of_twin() -> RopeSpec:  # non-RoPE twins are indexed by the RoPE twin's pairs
            def read() -> RopeSpec:
                rope = next(v for v in cfg.variants if v.is_twin and v.mechanism == "rope")
                found = checkpoint_dirs(out, rope)
                return wrap_twin(load_twin(found[min(found)]).eval(), tok, "twin-rope").rope

            return ctx.cached("twin spec", read)

        made = {}
        for c in cells:
            name, step, folder = c.payload
            v = cfg.variant(name)
            sets = ctx.cached(("sets", cfg.context_of(v)), lambda v=v: eval_sets(cfg, corpus, cfg.context_of(v)))
            tables = _analyse_checkpoint(cfg, v, step, Path(folder), tok, sets, spec_of_twin, device)
            made[c.key] = ({"variant": name, "step": step}, tables)
        return made

    def consolidate(self, config: dict, cells: dict) -> dict[str, pd.DataFrame]:
        return {name: pd.concat([c.tables[name] for c in cells.values()], ignore_index=True)
                for name in ("trajectory", "bands", "scores")}

    def finish(self, config: dict, table: Any, out: Path, ctx: Context) -> dict:  # pragma: no cover - run_twins writes
        return {}


TWIN_CHECKPOINTS = TwinCheckpoints()


def checkpoint_tables(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    tokenizer,
    corpus: TwinCorpus,
    *,
    device: str = "cpu",
    executor: Any = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Path]]:
    """Statistics and scores of every checkpoint of every variant, one cell per checkpoint.

    Each (variant, step) is a cell of the ``twins`` :class:`~massmech.infra.cells.CellStore` in
    ``out/cells``, keyed by the config (less the training schedule), the variant, the step and the
    checkpoint's weights: a rerun analyses only checkpoints it has not seen (new steps, or
    retrained weights). ``executor`` (``"serial"``, ``"processes"``, ...) computes the missing ones.

    Returns:
        ``(trajectory, bands, scores, finals)``: tidy tables with a ``variant`` and ``step``
        column, and the folder of each variant's final checkpoint.
    """
    out = Path(out)
    config = {"cfg": cfg, "out": str(out), "device": device}
    ctx = Context()
    ctx.cached("prepared", lambda: (tokenizer, corpus))  # already prepared by the caller
    planned = TWIN_CHECKPOINTS.plan(config, ctx)
    stored = compute_cells(TWIN_CHECKPOINTS, config, planned, CellStore(out / "cells", "twins"), executor=executor,
                           ctx=ctx, progress=progress)
    tables = TWIN_CHECKPOINTS.consolidate(config, stored)
    found = {v: checkpoint_dirs(out, v) for v in cfg.variants}
    finals = {v.name: found[v][max(found[v])] for v in cfg.variants if found[v]}
    return tables["trajectory"], tables["bands"], tables["scores"], finals


def disruption_table(cfg: TwinsConfig, lm: LoadedModel, corpus: TwinCorpus) -> pd.DataFrame:
    """Baseline vs top-k Q/K dims per head (pre-RoPE, every layer, chosen per sequence from its
    prompt: the tokens before the first scored one) replaced by their prompt mean at the prompt's
    positions (``kv_cache="prefill"``), vs random other dims per head drawn per example, matched in
    removed variance (and the count-matched random control); paired changes with CIs."""
    sets = eval_sets(cfg, corpus, cfg.context)
    massive = Disruption(target="qk", stage="pre", rule="topk", k=cfg.disrupt_k, seed=cfg.seed)
    base = row_values(_bridge_forward(lm), sets)
    frames = [score(base, seed=cfg.seed).assign(condition="baseline")]
    for name, d in (("massive", massive), ("matched", massive.as_control("matched")),
                    ("random", massive.as_control("random"))):
        iv = Intervention(lm, [d])
        with iv.active():
            vals = row_values(_bridge_forward(lm, iv), sets)
        frames.append(score(vals, baseline=base, seed=cfg.seed).assign(condition=name))
    return pd.concat(frames, ignore_index=True).assign(variant=lm.info.name, k=cfg.disrupt_k)


def wavelength_table(traj: pd.DataFrame, cfg: TwinsConfig) -> pd.DataFrame:
    """For each RoPE variant at its last step, Q/K in the later half of the layers: the peak pair
    and its wavelength relative to the training context."""
    late = cfg.n_layers // 2
    t = traj[(traj.mechanism == "rope") & (traj.site != "v") & (traj.layer >= late)]
    t = t[t.step == t.groupby("variant").step.transform("max")]
    return t[["variant", "context", "rope_theta", "site", "layer", "max_ratio", "peak_pair",
              "peak_wavelength_over_context", "centroid_wavelength_over_context", "slow_half_share"]].reset_index(drop=True)


def summary_ratios(traj: pd.DataFrame, cfg: TwinsConfig) -> dict[str, dict[str, float]]:
    """Per twin: the largest per-head max/mean ratio of M over the later half of the layers at
    the final checkpoint, for q, k, v."""
    late = cfg.n_layers // 2
    out = {}
    for v in TWINS:
        t = traj[(traj.variant == v.name) & (traj.layer >= late)]
        t = t[t.step == t.step.max()]
        out[v.mechanism] = {s: round(float(t[t.site == s].max_ratio.max()), 4) for s in SITES}
    return out


# --------------------------------------------------------------------------- runner
def run_twins(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    device: str | None = None,
    figures: bool = True,
    executor: Any = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Train (resuming) every variant, analyse every checkpoint, write tables, figures, summary.

    Args:
        cfg: The study.
        out: The twins folder (checkpoints resumed, ``analysis/`` replaced).
        workers: With no ``executor``: variants trained in parallel (local processes).
        device: Default CUDA when available, else the CPU.
        figures: Also draw the figures.
        executor: Who trains the variants and analyses the checkpoints not yet in the cell
            store (``"serial"`` default, ``"processes"``, ``"ray"``: one variant per worker,
            one GPU each on CUDA; see :mod:`massmech.infra.executors`).
        progress: Progress bars.
        overwrite: Replace twins trained with another config in ``out`` (refused otherwise). A
            second process writing ``out`` is refused while this one runs.

    Returns:
        The summary (also ``OUT/analysis/summary.json``): ``twins`` -> mechanism ->
        ``{"q", "k", "v"}`` ratios, per-variant final scores, the wavelength table and the
        disruption result.
    """
    device = resolve_device(device)
    out = open_study_dir(out, "twins")  # refuses a folder massmech did not write; the lock needs the folder
    with study_lock(out):
        tok, corpus = prepare(cfg, out, overwrite=overwrite)
        return _train_and_analyse(cfg, out, tok, corpus, workers, device, figures, executor, progress)


def _train_and_analyse(cfg: TwinsConfig, out: Path, tok: Any, corpus: TwinCorpus, workers: int, device: str,
                       figures: bool, executor: Any, progress: bool) -> dict:
    logs = train_all(cfg, out, workers=workers, device=device, executor=executor, progress=progress)
    traj, bands, scores, finals = checkpoint_tables(cfg, out, tok, corpus, device=device, executor=executor,
                                                    progress=progress)
    rope_final = wrap_twin(load_twin(finals["rope"]).to(device).eval(), tok, "twin-rope@final")
    disruption = disruption_table(cfg, rope_final, corpus)
    waves = wavelength_table(traj, cfg)
    seeds = seed_table(traj, cfg)
    matched = matched_accuracy(traj, scores, cfg)
    last = scores[scores.step == scores.groupby("variant").step.transform("max")]
    summary = {
        "preset": cfg.preset,
        "out": str(out),
        "steps": cfg.steps,
        "twins": summary_ratios(traj, cfg),
        "seeds": {f"{r.mechanism}.{r.site}.{r.measure}": {"mean": round(r.mean, 4), "ci": [round(r.ci_low, 4), round(r.ci_high, 4)],
                                                          "n_seeds": r.n_seeds} for r in seeds.itertuples()},
        "matched_accuracy": {  # mechanism -> site -> mean over seeds of max/mean M, each twin at the common level
            "level": round(float(matched.level.iloc[0]), 4) if len(matched) else None,
            **{m: g.groupby("site").max_ratio.mean().round(4).to_dict() for m, g in matched.groupby("mechanism")},
        },
        "final_scores": {v: dict(zip(g.metric, g.value.round(4), strict=True)) for v, g in last.groupby("variant")},
        "wavelength": waves.groupby(["variant", "site"]).peak_wavelength_over_context.median().round(3)
        .unstack().to_dict(orient="index"),
        "disruption": {c: dict(zip(g.metric, g.value.round(4), strict=True)) for c, g in disruption.groupby("condition")},
        "disruption_delta": {
            c: {m: [round(x, 4) for x in row] for m, row in zip(g.metric, g[["delta", "delta_ci_low", "delta_ci_high"]].to_numpy().tolist(), strict=True)}
            for c, g in disruption[disruption.condition != "baseline"].groupby("condition")
        },
    }
    tables = {"trajectory": traj, "bands": bands, "scores": scores, "disruption": disruption,
              "wavelength": waves, "seeds": seeds.drop(columns="values"),
              "matched_accuracy": matched, "train_log": log_table(logs)}
    with atomic_run_dir(out / "analysis", "twins-analysis", overwrite=True) as tmp:
        for name, t in tables.items():
            t.to_parquet(tmp / f"{name}.parquet", index=False)
            t.to_csv(tmp / f"{name}.csv", index=False)
        if figures:
            from massmech.report import plotting

            plotting.twins_trajectory(traj, out=tmp / "twins_trajectory")
            plotting.twins_bands(bands, out=tmp / "twins_bands")
            plotting.twins_disruption(disruption, out=tmp / "twins_disruption")
        write_json(tmp / "manifest.json", manifest(cfg, seed=cfg.seed))
        index = {v.name: {str(step): str(d.relative_to(out)) for step, d in sorted(checkpoint_dirs(out, v).items())}
                 for v in cfg.variants}  # variant -> step -> folder (each holds its own manifest.json)
        write_json(tmp / "checkpoints.json", index)
        write_json(tmp / "summary.json", summary)
    return summary


def load_tables(out: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The tables of a finished twins run (``OUT/analysis/*.parquet``)."""
    d = Path(out) / "analysis"
    if not (d / "summary.json").is_file():
        raise RunNotFoundError(f"{out} has no finished twins analysis: run massmech twins --out {out}")
    return {p.stem: pd.read_parquet(p) for p in sorted(d.glob("*.parquet"))}


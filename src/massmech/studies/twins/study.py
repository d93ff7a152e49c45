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
import json
import os
from collections.abc import Callable, Sequence
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
from massmech.errors import RunNotFoundError, TwinError
from massmech.files.io import sha256_file, write_json
from massmech.infra.cells import Cell, cell_key
from massmech.infra.study import CellSpec, Context, compute_cells, run_study, store_of
from massmech.stats import describe, token_nll
from massmech.studies.twins import SPEC
from massmech.studies.twins.config import TWINS, TwinsConfig, Variant
from massmech.studies.twins.data import KINDS, TwinCorpus, eval_set
from massmech.studies.twins.model import TwinLlamaForCausalLM, load_twin
from massmech.studies.twins.seeds import matched_accuracy, seed_table
from massmech.studies.twins.train import (
    checkpoint_dirs,
    log_table,
    prepare,
    read_log,
    resolve_device,
    train_variant,
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
        return lm.logits(x.to(lm.device))

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


class TwinsStudy:
    """The twins as a study (:mod:`massmech.infra.study`), in one cell store.

    Two kinds of cells: *training* (one per variant, its own unit and group, so any executor
    trains variants in parallel; the cell records that the variant reached its last step, the
    weights and the log live in its checkpoints, from which training resumes) and *checkpoint
    analysis* (one per (variant, step), keyed by the checkpoint's weights: a retrained checkpoint
    is another cell). The plan grows as training ends: a variant's checkpoints are planned once
    its last one exists. ``run_study`` plans again until nothing new appears. The run folder
    (``ctx.out``) holds the tokenizer, ``config.json`` and the checkpoints.
    """

    name = SPEC.name
    version = SPEC.version

    def train_cells(self, cfg: TwinsConfig, variants: Sequence[str] | None = None) -> list[CellSpec]:
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("variants", "preset")}
        cells = []
        for v in cfg.variants if variants is None else [cfg.variant(n) for n in variants]:
            parts = {"config": shared, "variant": v.name}
            cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=v.name, unit=v.name,
                                  payload=("train", v.name)))
        return cells

    def checkpoint_cells(self, cfg: TwinsConfig, out: Path) -> list[CellSpec]:
        # the weights' hash carries the training; of the config, drop what only shapes the training schedule
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("steps", "checkpoints", "variants", "preset")}
        cells = []
        for v in cfg.variants:
            found = checkpoint_dirs(out, v)
            if cfg.steps not in found:  # still training: planned once its last checkpoint exists
                continue
            for step, folder in sorted(found.items()):
                parts = {"config": shared, "variant": v.name, "step": step, "weights": _checkpoint_id(folder)}
                cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=v.name,
                                      unit=f"{v.name}@{step}", payload=("checkpoint", v.name, step, str(folder))))
        return cells

    def plan(self, cfg: TwinsConfig, ctx: Context) -> list[CellSpec]:
        ctx.cached("prepared", lambda: prepare(cfg, ctx.out))  # tokenizer and checks, before any worker starts
        return self.train_cells(cfg) + self.checkpoint_cells(cfg, ctx.out)

    def run_unit(self, cfg: TwinsConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        out, device = ctx.out, resolve_device(ctx.load_options.get("device"))
        made = {}
        for c in cells:
            if c.payload[0] == "train":
                log = train_variant(cfg, c.payload[1], out, device=device, progress=False)
                made[c.key] = ({"variant": c.payload[1], "steps": len(log)}, {})
            else:
                made[c.key] = self._analyse(cfg, c, ctx, device)
        return made

    def _analyse(self, cfg: TwinsConfig, c: CellSpec, ctx: Context, device: str) -> tuple[dict, dict]:
        out = ctx.out
        tok, corpus = ctx.cached("prepared", lambda: prepare(cfg, out))

        def spec_of_twin() -> RopeSpec:  # non-RoPE twins are indexed by the RoPE twin's pairs
            def read() -> RopeSpec:
                rope = next(v for v in cfg.variants if v.is_twin and v.mechanism == "rope")
                found = checkpoint_dirs(out, rope)
                return wrap_twin(load_twin(found[min(found)]).eval(), tok, "twin-rope").rope

            return ctx.cached("twin spec", read)

        _, name, step, folder = c.payload
        v = cfg.variant(name)
        sets = ctx.cached(("sets", cfg.context_of(v)), lambda: eval_sets(cfg, corpus, cfg.context_of(v)))
        return {"variant": name, "step": step}, _analyse_checkpoint(cfg, v, step, Path(folder), tok, sets, spec_of_twin,
                                                                    device)

    def consolidate(self, cfg: TwinsConfig, cells: dict[str, Cell]) -> dict[str, pd.DataFrame]:
        analysed = [c for c in cells.values() if "step" in c.data]
        return {name: pd.concat([c.tables[name] for c in analysed], ignore_index=True)
                for name in ("trajectory", "bands", "scores")}

    def finish(self, cfg: TwinsConfig, tables: dict[str, pd.DataFrame], out: Path, ctx: Context) -> dict:
        return _write_analysis(cfg, tables, out / "analysis", ctx)


TWINS_STUDY = TwinsStudy()


class _Only:
    """One kind of the twins' cells as a study of its own (same store, same keys): training only, or
    the checkpoint analyses only."""

    def __init__(self, which: str, variants: Sequence[str] | None = None) -> None:
        self.which, self.variants = which, variants
        self.name, self.version = TWINS_STUDY.name, TWINS_STUDY.version

    def plan(self, cfg: TwinsConfig, ctx: Context) -> list[CellSpec]:
        ctx.cached("prepared", lambda: prepare(cfg, ctx.out))
        if self.which == "train":
            return TWINS_STUDY.train_cells(cfg, self.variants)
        return TWINS_STUDY.checkpoint_cells(cfg, ctx.out)

    def run_unit(self, cfg: TwinsConfig, cells: Sequence[CellSpec], ctx: Context) -> dict:
        return TWINS_STUDY.run_unit(cfg, cells, ctx)

    def consolidate(self, cfg: TwinsConfig, cells: dict[str, Cell]) -> dict[str, pd.DataFrame]:
        return TWINS_STUDY.consolidate(cfg, cells)

    def finish(self, cfg: TwinsConfig, tables: dict[str, pd.DataFrame], out: Path, ctx: Context) -> dict:
        return TWINS_STUDY.finish(cfg, tables, out, ctx)


def train_all(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    variants: Sequence[str] | None = None,
    device: str | None = None,
    executor: Any = None,
    progress: bool = True,
) -> dict[str, list[dict]]:
    """Train every variant (resuming each from its last checkpoint), through an executor: the
    training cells of the twins study alone (a rerun skips variants that reached their last step).

    Args:
        workers: With no ``executor``: variants trained in parallel in local processes
            (:class:`~massmech.infra.executors.ProcessExecutor`, cores ÷ workers threads each).
        executor: ``"serial"``, ``"processes"``, ``"ray"`` or an executor object (one variant per
            Ray worker; with ``device="cuda"`` each asks for one GPU).

    Returns:
        Variant name -> training log.
    """
    from massmech.infra.executors import ProcessExecutor

    out = Path(out)
    prepare(cfg, out)  # tokenizer and checks once, before any worker starts
    names = [v.name for v in cfg.variants] if variants is None else list(variants)
    if executor is None:
        executor = ProcessExecutor(workers=workers) if workers > 1 and len(names) > 1 else "serial"
    ctx = Context(load_options={"device": resolve_device(device)}, out=out)
    store = store_of(TWINS_STUDY, out / "cells")
    for c in TWINS_STUDY.train_cells(cfg, names):  # a training cell without its checkpoints: tampered with
        v = cfg.variant(c.payload[1])
        if c.key in store and not checkpoint_dirs(out, v):
            raise TwinError(f"{out}: the training of {v.name} is recorded in {store.folder / c.key} but its "
                            f"checkpoints are gone; remove that cell folder to retrain it")
    compute_cells(_Only("train", names), cfg, store, executor=executor, ctx=ctx, progress=progress)
    return {n: read_log(out, cfg.variant(n)) for n in names}


def checkpoint_tables(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    device: str = "cpu",
    executor: Any = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Statistics and scores of every checkpoint of every trained variant (the checkpoint cells of
    the twins study alone): ``(trajectory, bands, scores)``, tidy, with ``variant`` and ``step``."""
    out = Path(out)
    ctx = Context(load_options={"device": device}, out=out)
    stored = compute_cells(_Only("checkpoints"), cfg, store_of(TWINS_STUDY, out / "cells"), executor=executor,
                           ctx=ctx, progress=progress)
    tables = TWINS_STUDY.consolidate(cfg, stored)
    return tables["trajectory"], tables["bands"], tables["scores"]


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
def _write_analysis(cfg: TwinsConfig, tables: dict[str, pd.DataFrame], where: Path, ctx: Context) -> dict:
    """The analysis on top of the cells: the RoPE twin's disruption, wavelengths, seeds, matched
    accuracy, the summary; tables (parquet + CSV), figures and ``checkpoints.json`` into ``where``."""
    from massmech import plotting

    out, device = ctx.out, resolve_device(ctx.load_options.get("device"))
    traj, bands, scores = tables["trajectory"], tables["bands"], tables["scores"]
    tok, corpus = ctx.cached("prepared", lambda: prepare(cfg, out))
    found = {v: checkpoint_dirs(out, v) for v in cfg.variants}
    rope_final = wrap_twin(load_twin(found[cfg.variant("rope")][cfg.steps]).to(device).eval(), tok, "twin-rope@final")
    disruption = disruption_table(cfg, rope_final, corpus)
    waves, seeds, matched = wavelength_table(traj, cfg), seed_table(traj, cfg), matched_accuracy(traj, scores, cfg)
    logs = {v.name: read_log(out, v) for v in cfg.variants}
    summary = _summary(cfg, traj, scores, disruption, waves, seeds, matched) | {"out": str(out)}
    written = {"trajectory": traj, "bands": bands, "scores": scores, "disruption": disruption, "wavelength": waves,
               "seeds": seeds.drop(columns="values"), "matched_accuracy": matched, "train_log": log_table(logs)}
    where.mkdir(parents=True, exist_ok=True)
    for name, t in written.items():
        t.to_parquet(where / f"{name}.parquet", index=False)
        t.to_csv(where / f"{name}.csv", index=False)
    plotting.twins_trajectory(traj, out=where / "twins_trajectory")
    plotting.twins_bands(bands, out=where / "twins_bands")
    plotting.twins_disruption(disruption, out=where / "twins_disruption")
    plotting.close_all()
    index = {v.name: {str(step): str(d.relative_to(out)) for step, d in sorted(found[v].items())} for v in cfg.variants}
    write_json(where / "checkpoints.json", index)  # variant -> step -> folder (each holds its own manifest.json)
    return summary


def _summary(cfg: TwinsConfig, traj: pd.DataFrame, scores: pd.DataFrame, disruption: pd.DataFrame,
             waves: pd.DataFrame, seeds: pd.DataFrame, matched: pd.DataFrame) -> dict:
    last = scores[scores.step == scores.groupby("variant").step.transform("max")]
    return {
        "preset": cfg.preset,
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


def run_twins(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    *,
    workers: int = 1,
    device: str | None = None,
    executor: Any = None,
    cells: str | os.PathLike | None = None,
    load_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train (resuming) every variant, analyse every checkpoint, write tables, figures, summary.

    Args:
        cfg: The study.
        out: The twins folder (checkpoints resumed, ``analysis/`` replaced).
        workers: With no ``executor``: variants trained in parallel (local processes).
        device: Default CUDA when available, else the CPU (or ``load_options["device"]``).
        executor: Who trains the variants and analyses the checkpoints not yet in the cell
            store (``"serial"`` default, ``"processes"``, ``"ray"``: one variant per worker,
            one GPU each on CUDA; see :mod:`massmech.infra.executors`).
        cells: A cell store (default ``out/cells``; the checkpoints stay in ``out``).
        load_options: ``{"device": ...}``, as the other studies take it.
        overwrite: Replace twins trained with another config in ``out`` (refused otherwise). A
            second process writing ``out`` is refused while this one runs.
        progress: Progress bars.

    Returns:
        The summary (also ``OUT/summary.json``): ``twins`` -> mechanism -> ``{"q", "k", "v"}``
        ratios, per-variant final scores, the wavelength table and the disruption result; the
        tables and figures are in ``OUT/analysis``.
    """
    from massmech.infra.executors import ProcessExecutor

    if executor is None:
        executor = ProcessExecutor(workers=workers) if workers > 1 else "serial"
    device = device or (load_options or {}).get("device")
    ctx = Context(load_options={"device": resolve_device(device)})
    if overwrite and Path(out).is_dir():
        prepare(cfg, out, overwrite=True)  # twins of another config: emptied of what massmech wrote there
    run_study(TWINS_STUDY, cfg, out, executor=executor, cells=cells, ctx=ctx, progress=progress, overwrite=overwrite)
    return json.loads((Path(out) / "summary.json").read_text())


def load_tables(out: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The tables of a finished twins run (``OUT/analysis/*.parquet``)."""
    d = Path(out) / "analysis"
    if not (Path(out) / "summary.json").is_file() or not d.is_dir():
        raise RunNotFoundError(f"{out} has no finished twins analysis: run massmech twins --out {out}")
    return {p.stem: pd.read_parquet(p) for p in sorted(d.glob("*.parquet"))}


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
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor
from tqdm.auto import tqdm

from massmech.capture import QKVStats, capture_stats
from massmech.evaluate import bootstrap_ci
from massmech.frequency import pair_energy
from massmech.interventions import Disruption, disrupt
from massmech.models import LoadedModel, wrap
from massmech.rope import RopeSpec
from massmech.runs import atomic_run_dir, check_out, manifest, write_json
from massmech.twin_data import KINDS, TwinCorpus, eval_set
from massmech.twin_train import (
    TWINS,
    TwinsConfig,
    checkpoint_dirs,
    log_table,
    prepare,
    resolve_device,
    train_all,
)
from massmech.twins import TwinLlamaForCausalLM, load_twin

SITES = ("q", "k", "v")


def wrap_twin(model: TwinLlamaForCausalLM, tokenizer, name: str) -> LoadedModel:
    """A twin as a :class:`~massmech.models.LoadedModel` (bridged as Llama)."""
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
        n_massive = (m > lam * m.mean(-1, keepdim=True)).sum((-2, -1))  # [layer]
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
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), reduction="none").view_as(m)
    right = (logits[:, :-1].argmax(-1) == target).float()
    n = m.sum(1).clamp_min(1)
    return (nll * m).sum(1) / n, (right * m).sum(1) / n


def row_values(
    forward: Callable[[Tensor], Tensor],
    sets: dict[str, tuple[Int[Tensor, "n pos"], Bool[Tensor, "n pos"]]],
    *,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Per evaluation row: natural-text loss (``"natural_loss"``) or in-context accuracy
    (``"<kind>_accuracy"``), in the order of the rows.

    Args:
        forward: Token ids ``[batch, pos]`` -> logits ``[batch, pos, vocab]``.
        sets: Name -> (tokens, scored mask); ``"natural"`` is scored by loss, the rest by accuracy.
    """
    out = {}
    with torch.inference_mode():
        for name, (toks, mask) in sets.items():
            vals = []
            for i in range(0, len(toks), batch_size):
                logits = forward(toks[i : i + batch_size])  # [b, pos, vocab], on the model's device
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
        lo, hi = bootstrap_ci(v, seed=seed)
        row = {"metric": metric, "value": float(v.mean()), "ci_low": lo, "ci_high": hi, "n": len(v)}
        if baseline is not None:
            d = v - baseline[metric]
            dlo, dhi = bootstrap_ci(d, seed=seed)
            row |= {"delta": float(d.mean()), "delta_ci_low": dlo, "delta_ci_high": dhi}
        rows.append(row)
    return pd.DataFrame(rows)


def eval_sets(cfg: TwinsConfig, corpus: TwinCorpus, context: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Held-out natural windows and in-context sequences at ``context`` tokens."""
    n_nat = max(1, cfg.analysis_tokens // context)
    sets = {"natural": eval_set(corpus, "natural", n=n_nat, length=context, seed=cfg.seed)}
    for kind in KINDS:
        sets[kind] = eval_set(corpus, kind, n=cfg.eval_examples, length=context, seed=cfg.seed)
    return sets


def _hf_forward(model: TwinLlamaForCausalLM) -> Callable[[Tensor], Tensor]:
    return lambda x: model(x.to(model.device)).logits


def _bridge_forward(lm: LoadedModel) -> Callable[[Tensor], Tensor]:
    return lambda x: lm.bridge(x.to(lm.info.device), return_type="logits")


# --------------------------------------------------------------------------- tables
def checkpoint_tables(
    cfg: TwinsConfig,
    out: str | os.PathLike,
    tokenizer,
    corpus: TwinCorpus,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, LoadedModel]]:
    """Statistics and scores of every checkpoint of every variant.

    Returns:
        ``(trajectory, bands, scores, finals)``: tidy tables with a ``variant`` and ``step``
        column, and the final checkpoint of each variant as a LoadedModel.
    """
    traj, bands, scores, finals = [], [], [], {}
    ref_spec: RopeSpec | None = None
    order = sorted(cfg.variants, key=lambda v: v.mechanism != "rope")  # a RoPE spec first
    found = {v: checkpoint_dirs(out, v) for v in order}
    jobs = [(v, s, d) for v in order for s, d in sorted(found[v].items())]
    sets_by_ctx: dict[int, dict] = {}
    for v, step, d in tqdm(jobs, desc="analyse checkpoints", disable=not progress):
        ctx = cfg.context_of(v)
        sets = sets_by_ctx.setdefault(ctx, eval_sets(cfg, corpus, ctx))
        model = load_twin(d).to(device).eval()
        lm = wrap_twin(model, tokenizer, f"twin-{v.name}@{step}")
        nat = sets["natural"][0]
        stats = capture_stats(lm, nat, sites=SITES, stages=("pre",), batch_size=8, progress=False)
        if lm.rope_or_none is not None and v.is_twin:
            ref_spec = lm.rope
        spec = lm.rope_or_none or ref_spec
        if spec is None:  # pragma: no cover - guarded by the ordering above
            raise RuntimeError("no RoPE spec to index pairs with")
        lt, pt = stats_tables(stats, spec, lam=cfg.lam, context=ctx)
        keys = {"variant": v.name, "mechanism": v.mechanism, "context": ctx,
                "rope_theta": cfg.theta_of(v) if v.mechanism == "rope" else np.nan, "step": step}
        if lm.rope_or_none is None:
            pt = pt.assign(wavelength=np.nan)
            lt = lt.assign(peak_wavelength_over_context=np.nan, centroid_wavelength_over_context=np.nan)
        traj.append(lt.assign(**keys))
        bands.append(pt.assign(**keys))
        scores.append(score(row_values(_hf_forward(model), sets), seed=cfg.seed).assign(**keys))
        if step == max(found[v]):
            finals[v.name] = lm
    return (pd.concat(traj, ignore_index=True), pd.concat(bands, ignore_index=True),
            pd.concat(scores, ignore_index=True), finals)


def disruption_table(cfg: TwinsConfig, lm: LoadedModel, corpus: TwinCorpus) -> pd.DataFrame:
    """Baseline vs top-k Q/K dims per head (pre-RoPE, every layer, chosen per sequence) replaced by
    their mean over the sequence, vs k random other dims per head; paired changes with CIs."""
    sets = eval_sets(cfg, corpus, cfg.context)
    massive = Disruption(target="qk", stage="pre", rule="topk", k=cfg.disrupt_k, seed=cfg.seed)
    base = row_values(_bridge_forward(lm), sets)
    frames = [score(base, seed=cfg.seed).assign(condition="baseline")]
    for name, d in (("massive", massive), ("random", massive.as_control("random"))):
        with disrupt(lm, d):
            vals = row_values(_bridge_forward(lm), sets)
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
    progress: bool = True,
) -> dict:
    """Train (resuming) every variant, analyse every checkpoint, write tables, figures, summary.

    Args:
        cfg: The study.
        out: The twins folder (checkpoints resumed, ``analysis/`` replaced).
        workers: Variants trained in parallel (processes).
        device: Default CUDA when available, else the CPU.
        figures: Also draw the figures.
        progress: Progress bars.

    Returns:
        The summary (also ``OUT/analysis/summary.json``): ``twins`` -> mechanism ->
        ``{"q", "k", "v"}`` ratios, per-variant final scores, the wavelength table and the
        disruption result.
    """
    out = check_out(out, "twins", resume=True)
    device = resolve_device(device)
    tok, corpus = prepare(cfg, out)
    logs = train_all(cfg, out, workers=workers, device=device, progress=progress)
    traj, bands, scores, finals = checkpoint_tables(cfg, out, tok, corpus, device=device, progress=progress)
    disruption = disruption_table(cfg, finals["rope"], corpus)
    waves = wavelength_table(traj, cfg)
    last = scores[scores.step == scores.groupby("variant").step.transform("max")]
    summary = {
        "preset": cfg.preset,
        "out": str(out),
        "steps": cfg.steps,
        "twins": summary_ratios(traj, cfg),
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
              "wavelength": waves, "train_log": log_table(logs)}
    with atomic_run_dir(out / "analysis", "twins-analysis", overwrite=True) as tmp:
        for name, t in tables.items():
            t.to_parquet(tmp / f"{name}.parquet", index=False)
            t.to_csv(tmp / f"{name}.csv", index=False)
        if figures:
            from massmech import plotting

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
        raise FileNotFoundError(f"{out} has no finished twins analysis: run massmech twins --out {out}")
    return {p.stem: pd.read_parquet(p) for p in sorted(d.glob("*.parquet"))}


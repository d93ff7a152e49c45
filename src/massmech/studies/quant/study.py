"""The quantization study: which quantizers keep the massive values, and what that does to tasks.

:func:`measure` scores one variant (:mod:`massmech.studies.quant.variants`):

* massive-value preservation against the clean model, for Q and K pre and post RoPE
  (:func:`massmech.studies.quant.preservation.massive_preservation`);
* accuracy on parametric and contextual tasks, with bootstrap CIs;
* perplexity on held-out natural text (windows disjoint from the calibration windows);
* bits per weight, or per cached K value.

:func:`run_quant_study` runs a grid of variants into one tidy table (``results.parquet``: one
row per model x variant x measure), writing each finished variant at once so a rerun resumes.
Methods and grids: :mod:`massmech.studies.quant.config`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from massmech.causal.evaluate import encode, rescore, score, summarize
from massmech.causal.perplexity import perplexity
from massmech.causal.tasks.builtin import get_task
from massmech.causal.vocabulary import primary_scorer
from massmech.core import decoder
from massmech.core.models import LoadedModel
from massmech.errors import QuantError, TaskError
from massmech.infra.cells import cell_key, data_hash
from massmech.infra.study import CellSpec, Context, run_study
from massmech.stats import chance_normalised, evaluable, holm, mcnemar_exact
from massmech.studies.quant import EXAMPLES, SPEC
from massmech.studies.quant.config import PROTECTS, QK_METHODS, QuantSpec, QuantStudyConfig
from massmech.studies.quant.data import StudyData, clean_stats, prepare
from massmech.studies.quant.preservation import massive_preservation
from massmech.studies.quant.smoothing import block_maps
from massmech.studies.quant.variants import (
    apply_variant,
    base_format,
    bits_per_value,
    check_groups,
    kv_bits,
    qk_layers,
    same_as_base_format,
    variant_weights,
)

SITES = (("q", "pre"), ("q", "post"), ("k", "pre"), ("k", "post"))


def measure(model: LoadedModel, spec: QuantSpec, cfg: QuantStudyConfig, data: StudyData, *,
            progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every measure of one variant, as tidy rows (see :func:`run_quant_study`), and the per-example
    verdicts (``task, uid, correct``) that paired tests against the reference need."""
    weights = variant_weights(cfg.model, spec, cfg, data.calib, progress=progress)
    if "base" not in data.extra:
        data.extra["base"] = base_format(model)
    base = data.extra["base"]
    common = {"model": model.info.name, "variant": spec.label, "method": spec.method, "family": spec.family,
              "bits": spec.bits, "group_size": spec.group_size, "alpha": spec.alpha if spec.method == "smoothquant" else None,
              "sites": spec.sites, "layers": spec.layers, "draw": spec.draw,
              "outlier_aware": spec.outlier_aware, "base": base, "same_as_base": same_as_base_format(spec.method, base)}
    rows, verdicts = [], []
    params = {k: p.detach() for k, p in decoder.parameters(model).items()}
    num = sum(float((v.double() - params[k].double()).pow(2).sum()) for k, v in weights.items())
    den = sum(float(params[k].double().pow(2).sum()) for k in weights)
    moved = spec.method in ("awq", "smoothquant")  # smoothing rescales weights by design
    rows.append({"measure": "weight_rel_error", "value": float("nan") if moved else ((num / den) ** 0.5 if den else 0.0)})
    rows.append({"measure": "bits_per_value", "value": bits_per_value(model, spec, weights, data)})
    torch.manual_seed(cfg.seed)
    # per-sequence activation scales and prompt-only KV ranges (padding masked): results do not
    # depend on the batch (tests/studies/test_quant_study.py::test_every_variant_is_batch_invariant)
    bs = cfg.batch_size
    # options continue a shared prompt pass (causal.choice) unless hooks read whole sequences' masks
    weights_only = spec.family not in ("kv", "w8a8")
    with apply_variant(model, spec, weights, data.keep_k):
        stats = clean_stats(model, data.held, batch_size=bs)
        pres = massive_preservation(data.clean, stats, lam=cfg.lam)
        for r in pres.itertuples(index=False):
            for meas in ("recall", "rel_error_massive", "rel_error_other"):
                rows.append({"measure": meas, "site": r.site, "stage": r.stage, "value": float(getattr(r, meas)), "n": int(r.n_massive)})
        ppl = perplexity(model, data.held, batch_size=bs)
        rows.append({"measure": "perplexity", "value": ppl["perplexity"], "n": ppl["n_tokens"]})
        rows.append({"measure": "nll", "value": ppl["nll"], "n": ppl["n_tokens"]})
        for name in cfg.tasks:
            task = get_task(name)
            replies = None  # the contains scorer's generation, read again by first-line (no second generation)
            for scorer in scorers_of(task, cfg):
                if scorer == "first-line" and replies is not None:
                    df = rescore(replies, task, scorer, n=cfg.n, seed=cfg.seed)
                else:
                    df = score(model, task, {"baseline": None}, scorer=scorer, max_new_tokens=cfg.max_new_tokens,
                               n=cfg.n, seed=cfg.seed, batch_size=bs, share_prompt=weights_only, progress=False)
                replies = df if scorer == "contains" else replies
                s = summarize(df, seed=cfg.seed).iloc[0]
                rows.append({"measure": "accuracy", "task": name, "kind": task.kind, "scorer": df.scorer.iloc[0],
                             "value": float(s.accuracy), "ci_low": float(s.ci_low), "ci_high": float(s.ci_high),
                             "n": int(s.n)})
                verdicts.append(df.assign(task=name, pred=df.pred.astype(str))[VERDICT_COLUMNS])  # pred: to read
            if spec.family == "kv":  # bits per cached K value at this task's real prompt lengths
                lengths = [len(encode(model, ex)[0]) for ex in task.examples(cfg.n, cfg.seed)]
                rows.append({"measure": "bits_per_value", "task": name, "kind": task.kind,
                             "value": float(np.mean([kv_bits(model, spec, data, n) for n in lengths])),
                             "n": len(lengths)})
    out = pd.DataFrame([common | r for r in rows])
    for col in ("site", "stage", "task", "kind", "scorer"):
        out[col] = out[col] if col in out else None
    for col in ("ci_low", "ci_high", "n"):
        out[col] = out[col] if col in out else np.nan
    return (out[[*common, "measure", "site", "stage", "task", "kind", "scorer", "value", "ci_low", "ci_high", "n"]],
            pd.concat(verdicts, ignore_index=True) if verdicts else pd.DataFrame(columns=VERDICT_COLUMNS))


VERDICT_COLUMNS = ["task", "scorer", "uid", "correct", "pred"]  # pred: what the model answered (generated text)


def scorers_of(task: Any, cfg: QuantStudyConfig) -> list[str]:
    """The config's scorers that apply to ``task`` (``rank`` needs distractors: none on passkey); a
    choice task is scored by its options whatever the scorer, so once.

    >>> from massmech.causal.tasks.builtin import get_task
    >>> cfg = QuantStudyConfig(model="tiny-llama", scorers=("strict", "rank"))
    >>> scorers_of(get_task("passkey"), cfg), scorers_of(get_task("kv_lookup"), cfg)
    (['strict'], ['strict', 'rank'])
    >>> scorers_of(get_task("capital_yesno"), cfg)
    ['strict']
    """
    if task.scoring == "choice":
        return list(cfg.scorers[:1])

    def applies(scorer: str) -> bool:
        if scorer != "rank":
            return True
        try:
            task.distractors(task.examples(1, cfg.seed)[0])
        except TaskError:
            return False
        return True

    return [s for s in cfg.scorers if applies(s)]


def with_scorer(frame: pd.DataFrame, *, accuracy_only: bool = False) -> pd.DataFrame:
    """A results or verdicts table of a cell from before scorers, with its scorer (``strict``) filled in
    (and no ``pred``: those cells did not keep what the model answered).

    >>> old = pd.DataFrame({"task": ["passkey"], "uid": [3], "correct": [True]})
    >>> with_scorer(old)[["scorer", "pred"]].values.tolist()
    [['strict', None]]
    >>> rows = pd.DataFrame({"measure": ["accuracy", "perplexity"], "value": [0.5, 9.0]})
    >>> with_scorer(rows, accuracy_only=True).scorer.tolist()
    ['strict', None]
    """
    out = frame.copy()
    for col in ("scorer",) if accuracy_only else ("scorer", "pred"):
        if col not in out:
            out[col] = None
    rows = (out.measure == "accuracy") if accuracy_only else slice(None)
    out.loc[rows, "scorer"] = out.loc[rows, "scorer"].fillna("strict")
    return out


def paired_tests(results: pd.DataFrame, verdicts: dict[str, pd.DataFrame], *, seed: int = 0,
                 reference: str = "none") -> pd.DataFrame:
    """Add to every accuracy row the exact McNemar test against the reference variant on the same
    examples (``b``, ``c``, ``p_value``), Holm's correction across the table's evaluable rows
    (``p_holm``), the task's ``chance`` and whether the reference is clearly above it (``evaluable``)."""
    out = results.copy()
    for col in ("b", "c", "p_value", "chance", "acc_norm"):
        out[col] = np.nan
    out["evaluable"] = None
    ref = verdicts.get(reference)
    for i, r in out[out.measure == "accuracy"].iterrows():
        chance = get_task(r.task).chance(int(r.n), seed, scorer=r.scorer)
        out.loc[i, ["chance", "acc_norm"]] = [chance, chance_normalised(r.value, chance)]
        if ref is None:
            continue
        base = ref[(ref.task == r.task) & (ref.scorer == r.scorer)].set_index("uid").correct
        out.loc[i, "evaluable"] = evaluable(int(base.sum()), len(base), chance)
        if r.variant == reference:
            continue
        mine = verdicts[r.variant]
        mine = mine[(mine.task == r.task) & (mine.scorer == r.scorer)].set_index("uid").correct.reindex(base.index)
        b, c, p = mcnemar_exact(mine.to_numpy(float), base.to_numpy(float))
        out.loc[i, ["b", "c", "p_value"]] = [b, c, p]
    ok = out.evaluable.fillna(False).astype(bool)
    out["p_holm"] = np.nan
    for _, rows in out.groupby(out.scorer.fillna("")):  # one Holm family per scorer (same examples, other scoring)
        fam = [p if ok[i] and p == p else None for i, p in rows.p_value.items()]
        out.loc[rows.index, "p_holm"] = pd.Series(holm(fam), index=rows.index, dtype=float)
    out["p_holm"] = out.p_holm.astype(float)
    return out


def summary_json(table: pd.DataFrame, variant: str) -> dict:
    """The CLI's JSON for one variant: ``massive_recall`` (mean over Q/K pre/post sites that have
    massive values), ``preservation``, ``perplexity``, ``bits_per_value`` and
    ``tasks -> name -> {accuracy, ci_low, ci_high, n, kind}``."""
    t = table[table.variant == variant]
    if t.empty:
        raise QuantError(f"no rows for variant {variant!r}")
    first = t.iloc[0]
    rec = t[t.measure == "recall"]
    get = lambda m: float(t[(t.measure == m) & t.task.isna()].value.iloc[0])  # noqa: E731 - variant level
    pres = {}
    for (site, stage), g in t[t.measure.isin(["recall", "rel_error_massive", "rel_error_other"])].groupby(["site", "stage"], sort=False):
        pres[f"{site}_{stage}"] = {r.measure: _num(r.value) for r in g.itertuples()} | {"n_massive": int(g.n.iloc[0])}
    task_bits = {r.task: r.value for r in t[(t.measure == "bits_per_value") & t.task.notna()].itertuples()}
    tasks = {r.task: {"accuracy": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": int(r.n), "kind": r.kind,
                      "p_value": _num(r.p_value), "p_holm": _num(r.p_holm), "b": _num(r.b), "c": _num(r.c),
                      "chance": _num(r.chance), "evaluable": None if r.evaluable is None else bool(r.evaluable),
                      "bits_per_value": _num(task_bits.get(r.task))}
             for r in primary_scorer(t[t.measure == "accuracy"]).itertuples()}
    return {
        "model": first.model, "variant": variant, "method": first.method, "bits": _num(first.bits),
        "group_size": _num(first.group_size), "alpha": _num(first.alpha), "base": first.base,
        "same_as_base": bool(first.same_as_base),
        "massive_recall": _num(rec.value.dropna().mean()) if rec.value.notna().any() else None,
        "preservation": pres, "perplexity": get("perplexity"), "bits_per_value": _num(get("bits_per_value")),
        "weight_rel_error": _num(get("weight_rel_error")), "tasks": tasks,
        "protects": PROTECTS.get(str(first.method)),
    }


def _num(x: Any) -> Any:
    """A JSON number: None for missing/NaN, int for whole numbers, else float."""
    if x is None:
        return None
    f = float(x)
    if np.isnan(f):
        return None
    return int(f) if f.is_integer() else f


# ----------------------------------------------------------------------------- runner
class QuantStudy:
    """The quantization study as a study (:mod:`massmech.infra.study`): one cell per variant."""

    name = SPEC.name
    version = SPEC.version

    def plan(self, cfg: QuantStudyConfig, ctx: Context) -> list[CellSpec]:
        variants = cfg.all_variants()  # validated by QuantSpec
        lm = ctx.model(cfg.model)  # the weights variant_weights starts from (tiny models: seed 0)
        for name in cfg.tasks:  # n beyond the data, or a prompt beyond the context: error before any work
            for ex in get_task(name).examples(cfg.n, cfg.seed):
                encode(lm, ex)
        for spec in variants:  # a group size or layout that does not fit: error before any work
            if spec.group_size is not None:
                check_groups(lm, spec.group_size)
            if spec.method in ("awq", "smoothquant"):
                for block in decoder.blocks(lm):
                    block_maps(block, awq=spec.method == "awq")
            if spec.method in QK_METHODS:
                qk_layers(decoder.hf_of(lm).config, spec.layers)  # local/global on a model without them
        examples = data_hash({name: repr(get_task(name).examples(cfg.n, cfg.seed)) for name in cfg.tasks})
        cells = []
        for spec in variants:
            parts = {"spec": spec.key_dict(), "cfg": cfg.key_dict(), "examples": examples}
            if ctx.model_id(cfg.model) != cfg.model:  # another dtype: cells of its own (float32 keys unchanged)
                parts["model_id"] = ctx.model_id(cfg.model)
            cells.append(CellSpec(cell_key(self.name, parts, version=self.version), parts, group=cfg.model,
                                  unit=spec.label, payload=spec))
        return cells

    def run_unit(self, cfg: QuantStudyConfig, cells, ctx: Context) -> dict:
        lm = ctx.model(cfg.model)
        data = ctx.cached(("quant-data", cfg.model), lambda: prepare(lm, cfg))
        out = {}
        for c in cells:
            results, verdicts = measure(lm, c.payload, cfg, data, progress=False)
            out[c.key] = ({"variant": c.payload.label, "base": base_format(lm)},
                          {"results": results, "verdicts": verdicts})
        return out

    def consolidate(self, cfg: QuantStudyConfig, cells: dict) -> pd.DataFrame:
        results = pd.concat([with_scorer(c.tables["results"], accuracy_only=True) for c in cells.values()],
                            ignore_index=True)
        base = next(iter(cells.values())).data["base"]  # a property of the model: set on every row here
        results["base"] = base
        results["same_as_base"] = results.method.map(lambda m: same_as_base_format(m, base))
        verdicts = {c.data["variant"]: with_scorer(c.tables["verdicts"]) for c in cells.values()}
        return paired_tests(results, verdicts, seed=cfg.seed)

    def finish(self, cfg: QuantStudyConfig, table: pd.DataFrame, out: Path, ctx: Context) -> dict:
        verdicts = [with_scorer(c.tables["verdicts"]).assign(variant=c.data["variant"]) for c in ctx.cells.values()]
        pd.concat(verdicts, ignore_index=True)[["variant", *VERDICT_COLUMNS]].to_parquet(out / EXAMPLES, index=False)
        return {"study": self.name, "model": cfg.model, "base": str(table.base.iloc[0]),
                "variants": {v: summary_json(table, v) for v in dict.fromkeys(table.variant)}}


QUANT = QuantStudy()


def run_quant_study(cfg: QuantStudyConfig, out: str | os.PathLike, *, model: LoadedModel | None = None,
                    executor: Any = None, cells: str | os.PathLike | None = None, load_options: dict | None = None,
                    overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) a study into ``out/``; returns the results table.

    Args:
        cfg: The study.
        out: Its folder.
        model: ``load_model(cfg.model)`` if already loaded (saves a load).
        executor: ``"serial"`` (default), ``"processes"``, ``"ray"`` or an executor object.
        cells: A cell store (default ``out/cells``).
        load_options: How workers load the model (``dtype``, ``device``, ``device_map``).
        progress: Progress bar over the variants.
        overwrite: ``out`` holds a study of another config: replace its results (refused otherwise).

    Writes each variant into the study's cell store (``out/cells/quant/<key>/``) as it finishes,
    ``out/results.parquet`` and ``.csv`` (one row per model x variant x measure; columns ``model,
    variant, method, family, bits, group_size, alpha, outlier_aware, base, same_as_base, measure,
    site, stage, task, kind, value, ci_low, ci_high, n``), ``out/summary.json`` and
    ``out/manifest.json``. Finished variants are not recomputed (a changed config, task data or
    schema version starts a new cell: the key hashes them).
    """
    ctx = Context(models={cfg.model: model} if model is not None else None, load_options=load_options)
    return run_study(QUANT, cfg, out, executor=executor, cells=cells, ctx=ctx, progress=progress, overwrite=overwrite,
                     kinds=SPEC.aliases)


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: perplexity, bits, mean K/Q recall, rel. errors and task accuracies."""
    rows = []
    for (model, variant), t in table.groupby(["model", "variant"], sort=False):
        row: dict[str, Any] = {"model": model, "variant": variant, "base": t.base.iloc[0], "same_as_base": bool(t.same_as_base.iloc[0])}
        for meas in ("bits_per_value", "weight_rel_error", "perplexity"):
            row[meas] = float(t[(t.measure == meas) & t.task.isna()].value.iloc[0])
        for r in t[t.measure.isin(["recall", "rel_error_massive", "rel_error_other"])].itertuples():
            row[f"{r.measure}_{r.site}_{r.stage}"] = r.value
        acc = primary_scorer(t[t.measure == "accuracy"])
        for r in acc.itertuples():
            row[r.task] = r.value
        for kind in ("parametric", "contextual"):
            row[f"{kind}_mean"] = float(acc[acc.kind == kind].value.mean()) if (acc.kind == kind).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)

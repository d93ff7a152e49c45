"""The cell store: atomic cells with provenance, stale versions recomputed, gc, and version pins."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import massmech as mm
from massmech.cli import main
from massmech.errors import StoreError
from massmech.infra.cells import CellStore, gc, list_cells
from massmech.studies.registry import cell_versions

CELL_VERSIONS = cell_versions()

PARTS = {"model": "tiny-llama", "task": {"name": "kv_lookup"}, "condition": None}


def test_put_get_and_provenance(tmp_path):
    store = CellStore(tmp_path, "ablation", version=CELL_VERSIONS["ablation"])
    key = store.key(PARTS)
    assert key not in store and store.get(key) is None
    store.put(key, PARTS, data={"verdicts": {"1": True}}, tables={"rows": pd.DataFrame({"x": [1.5, None]})})
    cell = store.get(key)
    assert cell.data == {"verdicts": {"1": True}} and cell.tables["rows"].x.isna().tolist() == [False, True]
    meta = cell.meta
    assert meta["study"] == "ablation" and meta["version"] == CELL_VERSIONS["ablation"] and meta["parts"] == PARTS
    assert {"created", "massmech", "git", "packages"} <= set(meta) and meta["packages"]["torch"]
    assert store.key(dict(reversed(list(PARTS.items())))) == key  # canonical: order does not matter
    with pytest.raises(StoreError, match="does not match"):
        store.put(key, PARTS | {"model": "other"})


def test_a_stale_cell_is_recomputed_never_reused(tmp_path):
    old = CellStore(tmp_path, "quant", version=CELL_VERSIONS["quant"] - 1)
    old_key = old.key(PARTS)
    old.put(old_key, PARTS, data="computed by older code")
    new = CellStore(tmp_path, "quant", version=CELL_VERSIONS["quant"])
    assert new.key(PARTS) != old_key and new.get(new.key(PARTS)) is None
    assert old_key not in new  # even asked by the old key, a new store refuses an old-version cell
    listing = list_cells(tmp_path, CELL_VERSIONS)
    assert listing.current.tolist() == [False]
    assert [p.name for p in gc(tmp_path, CELL_VERSIONS, dry_run=True)] == [old_key] and (tmp_path / "quant" / old_key).exists()
    assert [p.name for p in gc(tmp_path, CELL_VERSIONS)] == [old_key] and not (tmp_path / "quant" / old_key).exists()


def test_a_killed_write_leaves_only_whole_cells_and_gc_keeps_foreign_files(tmp_path):
    store = CellStore(tmp_path, "twins", version=CELL_VERSIONS["twins"])
    key = store.key(PARTS)

    class Boom(pd.DataFrame):
        def to_parquet(self, *a, **k):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put(key, PARTS, tables={"t": Boom({"a": [1]})})
    assert key not in store and list((tmp_path / "twins").iterdir()) == []
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "twins" / f".tmp-{key}-{int(dead.stdout)}-x"  # what a SIGKILL mid-write leaves
    leftover.mkdir()
    in_flight = tmp_path / "twins" / f".tmp-{key}-{os.getpid()}-y"  # a writer still running
    in_flight.mkdir()
    mine = tmp_path / "twins" / "my-notes"
    mine.mkdir()
    (mine / "cell.json").write_text("{}")  # not a massmech cell stamp
    newer = CellStore(tmp_path, "twins", version=CELL_VERSIONS["twins"] + 1)  # a newer massmech shares the store
    newer.put(newer.key(PARTS), PARTS, data=1)
    assert gc(tmp_path, CELL_VERSIONS) == [leftover] and mine.exists() and in_flight.exists() and newer.keys()


def test_two_writers_of_one_cell_keep_one_whole_cell(tmp_path):
    a, b = CellStore(tmp_path, "ablation", version=CELL_VERSIONS["ablation"]), CellStore(tmp_path, "ablation", version=CELL_VERSIONS["ablation"])
    key = a.key(PARTS)
    a.put(key, PARTS, data="first")
    b.put(key, PARTS, data="second")  # the cell is already there: the first one stays, no error
    assert a.get(key).data == "first" and [p.name for p in (tmp_path / "ablation").iterdir()] == [key]


def test_cells_command(tmp_path, capsys):
    store = CellStore(tmp_path, "ablation", version=1)
    store.put(store.key(PARTS), PARTS, data=1)
    assert main(["cells", "ls", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["study"], r["version"], r["current"]) for r in rows] == [("ablation", 1, False)]
    assert main(["cells", "gc", str(tmp_path)]) == 0
    assert "removed 1" in capsys.readouterr().out and list_cells(tmp_path, CELL_VERSIONS).empty


# --------------------------------------------------------------------------- version pins
# Each study's measure on a tiny model, hashed, pinned together with the study's cell version.
# If a change alters what a measure computes, this fails: bump the study's version (old cells
# are then recomputed, never reused) and re-pin both numbers together, with a changelog line.
PINS = {
    "ablation": (5, "1ca42ca7f8ddb472"),  # 5: replies end at EOS (the pinned measure is teacher-forced: same digest)
    "quant": (5, "a1035405c0512227"),  # 5: replies end at EOS; 4: keep-massive rows before QK-norm (same digest)
    "twins": (2, ("9311ce6e33ad4242", "215d13e7ba933388")),  # 2: the training cells moved into this store
    "analyze": (3, "5cc60f7e49833f5e"),  # 3: raw Q/K on QK-norm models (tiny-llama has none: same digest)
    "shift": (1, "c998e619b654827a"),
    "heads": (1, "3b2b5daaeed47c56"),
    "attribute": (1, "3bffe2c4dcb3c578"),
}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ids():
    return torch.randint(0, 200, (2, 32), generator=torch.Generator().manual_seed(0))


def _ablation_measure():
    from massmech.causal.disruption import Disruption
    from massmech.causal.tasks.builtin import get_task

    model = mm.load_model("tiny-llama")
    d = Disruption(rule="topk", k=2)
    conditions = {"baseline": None, "topk": d, "lambda": Disruption(lam=1.2), "matched": d.as_control("matched"),
                  "pooled": Disruption(rule="topk", k=2, stage="post", replace="pooled_mean")}
    conditions["pooled-matched"] = conditions["pooled"].as_control("matched")
    df = mm.evaluate(model, get_task("kv_lookup"), conditions, n=6, seed=0, progress=False)
    return [[r.condition, str(r.uid), bool(r.correct), r.pred, int(r.n_dims), round(r.removed_variance, 4)]
            for r in df.sort_values(["condition", "uid"]).itertuples()]


def _quant_measure():
    from massmech.studies.quant.methods import quantize_weights
    from massmech.studies.quant.preservation import massive_preservation

    model = mm.load_model("tiny-llama")
    clean = mm.capture_stats(model, _ids(), sites=("q", "k"), progress=False)
    quantize_weights(model, "rtn", bits=4, group_size=16)
    quant = mm.capture_stats(model, _ids(), sites=("q", "k"), progress=False)
    return massive_preservation(clean, quant, lam=1.2).round(4).to_dict(orient="records")


def _twins_measure():
    from massmech.studies.twins.measures import stats_tables

    model = mm.load_model("tiny-llama")
    stats = mm.capture_stats(model, _ids(), sites=("q", "k", "v"), stages=("pre",), progress=False)
    layers, pairs = stats_tables(stats, model.rope, lam=1.2, context=32)
    return [layers.round(4).to_dict(orient="records"), pairs.round(4).to_dict(orient="records")]


def _analyze_measure():
    from massmech.studies.analyze.config import AnalyzeConfig
    from massmech.studies.analyze.study import capture_chunks

    model = mm.load_model("tiny-llama")
    chunks = capture_chunks(model, _ids().tolist(), AnalyzeConfig(n_chunks=2))
    return [{f"{s}.{st}": c.norm(s, st).double().round(decimals=4).flatten().tolist() for s, st in c.keys()}
            for c in chunks]


def _twins_measures():
    return (_twins_measure(), _twins_train_measure())  # one store: the checkpoint analyses and the training


def _twins_train_measure():
    import tempfile

    from massmech.studies.twins.config import TwinsConfig
    from massmech.studies.twins.train import train_variant

    cfg = TwinsConfig(d_model=16, n_layers=1, n_heads=2, d_mlp=32, context=16, batch_size=2, steps=3, warmup=1,
                      vocab_size=300, checkpoints=(3,), analysis_tokens=64, eval_examples=2)
    with tempfile.TemporaryDirectory() as out:
        return [round(r["loss"], 4) for r in train_variant(cfg, "rope", out, device="cpu", progress=False)]


def _shift_measure():
    from massmech.core.shift import shift_changes

    model = mm.load_model("tiny-llama")
    t = shift_changes(model, _ids()[:, 1:], [5, 6, 7, 8], lead=[1])
    return t.round(4).to_dict(orient="records")


def _heads_measure():
    from massmech.causal.retrieval import rank_heads
    from massmech.causal.tasks.builtin import get_task
    from massmech.studies.heads.study import q_pairs

    model = mm.load_model("tiny-llama")
    ranking = rank_heads(model, get_task("passkey"), n=2, lam=1.2).round(4).to_dict(orient="records")
    df = mm.evaluate(model, get_task("kv_lookup"), {"baseline": None, "top": q_pairs(1.2, [(0, 1), (1, 2)])}, n=4,
                     progress=False)
    return [ranking, [[r.condition, int(r.uid), bool(r.correct), int(r.n_dims)] for r in df.itertuples()]]


def _attribute_measure():
    from massmech.causal.retrieval import edge_attribution
    from massmech.causal.tasks.builtin import get_task

    df = edge_attribution(mm.load_model("tiny-llama"), get_task("passkey"), n=2, lam=1.2)
    return df.round(4).to_dict(orient="records")


def test_every_study_with_cells_has_a_pin():
    assert set(PINS) == set(CELL_VERSIONS)


@pytest.mark.parametrize("study", sorted(PINS))
def test_measure_outputs_are_pinned_with_the_cell_version(study):
    measure = {"ablation": _ablation_measure, "quant": _quant_measure, "twins": _twins_measures,
               "analyze": _analyze_measure, "shift": _shift_measure, "heads": _heads_measure,
               "attribute": _attribute_measure}[study]
    version, digest = PINS[study]
    out = measure()
    got = (CELL_VERSIONS[study], tuple(map(_digest, out)) if isinstance(digest, tuple) else _digest(out))
    assert got == (version, digest), (
        f"{study}: the measure's output or cell version changed ({got} vs pinned {(version, digest)}). "
        f"If the measure changed on purpose, bump the study's version (its StudySpec) and re-pin both."
    )

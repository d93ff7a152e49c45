"""Attention logits at the answer position, split by RoPE band and massive pairs: needle and sink edges."""

from __future__ import annotations

import pytest
import torch

from massmech.causal.evaluate import encode
from massmech.causal.retrieval import edge_attribution, needle_positions, summarize_edges
from massmech.causal.tasks.base import Example
from massmech.causal.tasks.builtin import get_task
from massmech.causal.tasks.custom import RecordTask
from massmech.core.attribution import attribute_logits, query_logits
from massmech.core.loading import load_model


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3"])
def test_one_query_row_is_the_full_attribution_and_the_models_logits(name):
    model = load_model(name)
    ids = torch.tensor(model.tokenize("the pass key is 123 and more"))
    q = ids.shape[1] - 2
    one = query_logits(model, ids, q)
    full = attribute_logits(model, ids)
    for layer, pl in one.items():
        assert pl.max_error < 1e-5
        assert torch.allclose(pl.contributions[0, :, 0], full[layer].contributions[0, :, q, : q + 1], atol=1e-6)


def test_needle_positions_skip_the_bare_space_and_find_every_occurrence():
    model = load_model("tiny-llama")  # byte tokens: BOS 257, then one per character
    ex = Example(uid=0, prompt="a 42 b 42", answer=" 42")
    assert needle_positions(model, ex, encode(model, ex)[0]) == [3, 4, 8, 9]
    assert needle_positions(model, Example(uid=0, prompt="nothing", answer=" 42"), encode(model, ex)[0][:3]) == []


def test_the_sink_edge_is_the_models_own_logit_advantage_and_groups_sum_to_it():
    model = load_model("tiny-qwen2")
    task = get_task("kv_lookup")
    df = edge_attribution(model, task, n=2, layers=[1])
    ex = task.examples(2, 0)[0]
    prompt = encode(model, ex)[0]
    scores = model.run_hooks(torch.tensor([prompt]), {"s": "blocks.1.attn.hook_attn_scores"}, None)["s"][0].float()
    row = scores[:, len(prompt) - 1, : len(prompt)]  # [head, keys]
    by_hand = row[:, 0] - row[:, 1:].mean(1)
    got = df[(df.uid == ex.uid) & (df.edge == "sink") & (df.grouping == "band")].groupby("head").total.first()
    assert torch.allclose(torch.tensor(got.to_numpy(), dtype=torch.float32), by_hand, atol=1e-5)
    for _, g in df.groupby(["uid", "head", "edge", "grouping"]):
        assert g.advantage.sum() == pytest.approx(g.total.iloc[0], abs=1e-5)
    for _, g in df[df.edge == "sink"].groupby(["uid", "layer", "head", "grouping"]):  # the groups partition the pairs
        assert g.pairs.sum() == load_model("tiny-qwen2").rope.n_pairs
    summary = summarize_edges(df)
    assert set(summary.edge) == {"needle", "sink"} and {"massive", "other"} <= set(summary.group)


def test_an_answer_not_in_the_prompt_has_only_the_sink_edge():
    task = RecordTask.from_records([{"q": f"Say {i}:", "a": "zz"} for i in range(3)], fields={"question": "q", "answer": "a"})
    df = edge_attribution(load_model("tiny-llama"), task, n=2, layers=[0])
    assert set(df.edge) == {"sink"}


def test_the_attribute_study_writes_its_tables_and_refuses_bad_layers(tmp_path, capsys):
    import pandas as pd

    from massmech.cli import main

    out = tmp_path / "attr"
    assert main(["attribute", "--model", "tiny-llama", "--tasks", "passkey", "--n", "2", "--layers", "0",
                 "--out", str(out)]) == 0
    assert "passkey / needle: total" in capsys.readouterr().out
    assert set(pd.read_parquet(out / "results.parquet").layer) == {0}
    bands = pd.read_parquet(out / "bands.parquet")
    assert {"needle", "sink"} <= set(bands.edge) and (out / "figures" / "attribution_passkey.png").is_file()
    with pytest.raises(SystemExit) as err:  # argparse: a layer that is not a number
        main(["attribute", "--model", "tiny-llama", "--tasks", "passkey", "--layers", "one", "--out", str(out)])
    assert err.value.code == 2 and "expected comma-separated ints" in capsys.readouterr().err
    assert main(["attribute", "--model", "tiny-llama", "--tasks", "passkey", "--layers", "9",
                 "--out", str(tmp_path / "other")]) == 2
    assert "layers (9,) out of range" in capsys.readouterr().err and not (tmp_path / "other").exists()

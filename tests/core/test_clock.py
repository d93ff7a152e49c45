"""Forward passes are timed, the ones cut short too (issue 28's overhead ratio)."""

from __future__ import annotations

import time

import torch

import massmech as mm
from massmech.core.bridge import final_logits
from massmech.core.clock import FORWARDS
from massmech.core.models import END_HOOK, pad_batch


def test_every_pass_of_a_loaded_model_is_counted_with_its_tokens():
    model = mm.load_model("tiny-llama")
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    before = FORWARDS.snapshot()
    model.forward(ids, until=END_HOOK)  # stopped by an exception inside the pass: still counted
    model.logits(ids)
    spent = FORWARDS.since(before)
    assert (spent.passes, spent.tokens) == (2, 16) and spent.seconds > 0
    ids, mask = pad_batch([[5, 6, 7], [8]], model.pad_id, left=True)
    before = FORWARDS.snapshot()
    model.generate(ids, mask, 3)
    assert FORWARDS.since(before).passes >= 3  # a prompt pass, then one per new token (cached)


def test_a_pass_that_fails_is_timed_and_leaves_no_start_behind():
    model = mm.load_model("tiny-llama")
    before = FORWARDS.snapshot()
    try:
        model.logits(torch.tensor([[10**9]]))  # an id beyond the vocabulary: the embedding raises
    except (IndexError, RuntimeError):
        pass
    model.logits(torch.tensor([[5, 6]]))
    spent = FORWARDS.since(before)
    assert spent.passes == 2 and spent.tokens == 3


def test_a_pass_of_the_base_model_alone_counts_once_and_inside_the_root_not_again():
    model = mm.load_model("tiny-llama")
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    before = FORWARDS.snapshot()
    final_logits(model.bridge, ids, torch.ones_like(ids), torch.tensor([0, 1]), torch.tensor([2, 2]))  # base model only
    model.logits(ids)  # the root, which calls the base model inside
    spent = FORWARDS.since(before)
    assert (spent.passes, spent.tokens) == (2, 12)


def test_the_hooks_massmech_runs_are_timed_as_part_of_the_pass():
    model = mm.load_model("tiny-llama")
    ids = torch.tensor([[5, 6, 7]])
    before = FORWARDS.snapshot()
    with model.hooks([("blocks.0.attn.hook_k", lambda x, hook: time.sleep(0.05))]):
        model.logits(ids)
    spent = FORWARDS.since(before)
    assert 0.05 <= spent.hook_seconds < spent.seconds

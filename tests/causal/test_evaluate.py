"""Scoring: teacher-forced exact match == generation, folded == sequential, logits path, CIs."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from massmech.causal.disruption import Disruption
from massmech.causal.evaluate import encode, evaluate, generate_exact, summarize
from massmech.causal.intervention import Intervention
from massmech.causal.tasks.base import Example
from massmech.causal.tasks.builtin import get_task
from massmech.stats import bootstrap_ci


def test_scored_logits_equal_the_bridge_logits(tiny):
    tokens = tiny.probe_tokens(9).repeat(2, 1)
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0  # right padding of row 1
    with torch.inference_mode():
        ref = tiny.bridge(tokens, attention_mask=mask)
        where = torch.tensor([(0, t) for t in range(9)] + [(1, t) for t in range(6)])
        got = tiny.final_logits(tokens, mask, where[:, 0], where[:, 1])
    expect = torch.cat([ref[0, :9], ref[1, :6]]).float()
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


class _IdTokenizer:
    """Text <-> ids that round-trip for *every* id (the byte tokenizer cannot: lone bytes >= 128).

    ASCII text maps to its byte ids; each id decodes to one private character that encodes back.
    """

    pad_token_id, bos_token_id, eos_token_id = 256, 257, 258

    def __call__(self, texts, add_special_tokens=True):
        one = isinstance(texts, str)
        ids = [
            [self.bos_token_id] * add_special_tokens + [ord(c) - 0x4E00 if ord(c) >= 0x4E00 else ord(c) for c in t]
            for t in ([texts] if one else texts)
        ]
        return SimpleNamespace(input_ids=ids[0] if one else ids)

    def decode(self, ids):
        return "".join(chr(0x4E00 + i) for i in ids)


def _own_answers(model, task, conditions, n=6, n_tokens=3):
    """Examples whose gold answer is the model's own greedy continuation under each condition."""
    examples = task.examples(n, 0)
    out = {}
    for name, d in conditions.items():
        stub = [dataclasses.replace(e, answer=" ") for e in examples]
        gen = generate_exact(model, stub, {name: d}, max_new_tokens=n_tokens, progress=False)
        out[name] = [dataclasses.replace(e, answer=p) for e, p in zip(stub, gen.pred, strict=True)]
    return out


@pytest.mark.parametrize("kv_cache", ["prefill", "every_step"])
def test_teacher_forced_verdict_equals_generation(tiny_models, kv_cache):
    model = copy.copy(tiny_models["tiny-llama"])
    model.tokenizer = _IdTokenizer()
    d = Disruption(rule="topk", k=3, kv_cache=kv_cache)
    conds = {"baseline": None, "massive": d}
    gold = _own_answers(model, get_task("kv_lookup"), conds)
    for name, d_ in conds.items():
        # gold = the model's own generation: both paths must say "correct" ...
        exs = gold[name]
        tf = evaluate(model, exs, {name: d_}, progress=False)
        gen = generate_exact(model, exs, {name: d_}, progress=False)
        assert tf.correct.all() and gen.correct.all()
        # ... and the other condition's verdicts agree between the paths example by example
        other = next(k for k in conds if k != name)
        tf2 = evaluate(model, exs, {other: conds[other]}, progress=False)
        gen2 = generate_exact(model, exs, {other: conds[other]}, progress=False)
        assert (tf2.correct.to_numpy() == gen2.correct.to_numpy()).all()
    # a corrupted last answer token makes both paths say "wrong"
    e = gold["baseline"][0]
    ids = encode(model, e)[1][0]
    bad = dataclasses.replace(e, answer=model.tokenizer.decode(ids[:-1] + [ids[-1] ^ 1]))
    assert not evaluate(model, [bad], {"b": None}, progress=False).correct.any()
    assert not generate_exact(model, [bad], {"b": None}, progress=False).correct.any()


def test_decode_steps_are_disrupted_only_under_every_step(tiny_models):
    model = tiny_models["tiny-llama"]
    tokens = model.probe_tokens(12)
    for kv_cache, touched in (("prefill", False), ("every_step", True)):
        iv = Intervention(model, [Disruption(rule="topk", k=4, kv_cache=kv_cache)])
        iv.set_batch(torch.zeros(1, dtype=torch.long), torch.ones_like(tokens, dtype=torch.bool))
        with torch.inference_mode(), iv.active():
            model.bridge.original_model.generate(
                tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=3, do_sample=False
            )
        assert bool(iv.last_changed.sum() > 0) == touched  # the last pass was a one-token decode step


def test_folded_conditions_equal_sequential_passes(tiny_models):
    model = tiny_models["tiny-gemma3"]
    d = Disruption(rule="topk", k=2)
    conds = {"baseline": None, "m": d, "c": d.as_control("random"), "l": d.as_control("lowest"),
             "v": d.as_control("matched")}
    for task in ("kv_lookup", "sentiment"):
        a = evaluate(model, get_task(task), conds, n=6, batch_size=5, progress=False)
        b = evaluate(model, get_task(task), conds, n=6, batch_size=3, fold=False, progress=False)
        exact = ["condition", "uid", "group", "correct", "pred", "n_dims"]
        assert a[exact].equals(b[exact])
        # a float sum over the hooked activations: equal up to the kernels' rounding at other batch widths
        np.testing.assert_allclose(a.removed_variance, b.removed_variance, rtol=1e-4)
        assert set(a.condition) == set(conds) and len(a) == 6 * len(conds)
        assert (a[a.condition == "m"].n_dims.to_numpy() == a[a.condition == "c"].n_dims.to_numpy()).all()


def test_multiple_choice_picks_the_highest_logprob(tiny_models):
    model = tiny_models["tiny-llama"]
    ex = Example(uid=0, prompt="ab", options=(" a", " b", " c"), label=1)
    df = evaluate(model, [ex], {"b": None}, progress=False)
    prompt, conts = encode(model, ex)
    with torch.inference_mode():
        lp = []
        for c in conts:
            logits = model.bridge(torch.tensor([prompt + c])).log_softmax(-1)[0]
            lp.append(sum(logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(c)))
    assert df.pred.iloc[0] == ex.options[int(np.argmax(lp))].strip()
    assert df.correct.iloc[0] == (int(np.argmax(lp)) == 1)


def test_bootstrap_ci_and_summary():
    v = np.r_[np.ones(30), np.zeros(70)]
    lo, hi = bootstrap_ci(v, seed=1)
    assert lo < 0.3 < hi and (lo, hi) == bootstrap_ci(v, seed=1)
    assert 0.18 < lo < 0.25 and 0.35 < hi < 0.42  # binomial 95% interval around 0.3, n=100
    import pandas as pd

    df = pd.DataFrame({"condition": ["baseline"] * 4 + ["m"] * 4, "uid": [1, 2, 3, 4] * 2,
                       "correct": [1, 1, 1, 0, 0, 1, 0, 0], "n_dims": [0] * 4 + [5] * 4})
    s = summarize(df).set_index("condition")
    assert s.loc["m", "accuracy"] == 0.25 and s.loc["m", "delta"] == -0.5 and s.loc["m", "n"] == 4


def test_bad_inputs(tiny_models):
    model = tiny_models["tiny-llama"]
    with pytest.raises(ValueError, match="conditions is empty"):
        evaluate(model, get_task("kv_lookup"), {}, n=2, progress=False)
    with pytest.raises(ValueError, match="context"):
        evaluate(model, get_task("passkey", filler_repeats=400), {"b": None}, n=1, progress=False)
    with pytest.raises(ValueError, match="needs answers"):
        evaluate(model, get_task("sentiment"), {"b": None}, n=2, scoring="exact", progress=False)


def test_perplexity_against_a_hand_computation():
    from massmech import load_model
    from massmech.causal.perplexity import perplexity

    model = load_model("tiny-llama")  # a fresh copy: its LM head is zeroed below
    windows = [[5, 9, 12, 7, 3], [8, 2, 4]]  # unequal lengths: padding must not count
    hf = model.bridge.original_model
    with torch.no_grad():
        nll = []
        for w in windows:
            logp = torch.log_softmax(hf(torch.tensor([w])).logits[0, :-1].float(), -1)
            nll += [-logp[i, t].item() for i, t in enumerate(w[1:])]
    got = perplexity(model, windows, batch_size=2)
    assert got["n_tokens"] == 6
    assert got["nll"] == pytest.approx(sum(nll) / 6, rel=1e-5)
    assert got["perplexity"] == pytest.approx(np.exp(sum(nll) / 6), rel=1e-5)
    head = next(p for n, p in hf.named_parameters() if n.startswith("lm_head"))
    with torch.no_grad():  # all-zero logits: every token has probability 1/vocab
        head.zero_()
    vocab = head.shape[0]
    assert perplexity(model, windows)["perplexity"] == pytest.approx(vocab, rel=1e-5)
    with pytest.raises(ValueError, match="two or more tokens"):
        perplexity(model, [[1]])


def test_perplexity_holds_one_rows_logits_at_a_time(monkeypatch):
    """Gemma-3's 262k vocabulary at 8 x 512 tokens is 4.3 GB of fp32 logits, twice with their
    log-softmax: two sweeps beside each other were killed for memory (2026-12-06). Perplexity
    unembeds one row at a time."""
    from massmech import load_model
    from massmech.causal.perplexity import perplexity
    from massmech.core import bridge

    model = load_model("tiny-llama")
    seen, unembed = [], bridge._unembed
    monkeypatch.setattr(bridge, "_unembed", lambda hf, h: seen.append(tuple(h.shape[:-1])) or unembed(hf, h))
    monkeypatch.setattr(type(model), "logits", lambda *a, **k: pytest.fail("the whole batch's logits were made"))
    perplexity(model, [[5, 9, 12, 7, 3], [8, 2, 4], [6, 6, 1, 2]], batch_size=3)
    assert seen == [(5,)] * 3  # one padded row of 5 positions per call


def test_scorers_read_what_the_model_generated(tiny_models):
    """Issue 26: ``contains`` finds the gold answer anywhere in the greedy continuation (the paper's
    ``label in answer``), ``first-line`` only before the first newline, ``strict`` needs the exact
    tokens; the gold answers are cut from the model's own greedy output, so the verdicts are known."""
    from massmech.causal.evaluate import score

    model = tiny_models["tiny-llama"]
    prompts = ["The key is", "Remember: 4 7 1. The number was"]
    probe = [Example(uid=i, prompt=p, answer=" x") for i, p in enumerate(prompts)]
    said = generate_exact(model, probe, {"b": None}, max_new_tokens=12, match="contains", progress=False).pred.tolist()
    inner = [Example(uid=i, prompt=p, answer=" " + s.lstrip()[3:7]) for i, (p, s) in enumerate(zip(prompts, said, strict=True))]
    got = generate_exact(model, inner, {"b": None}, max_new_tokens=12, match="contains", progress=False)
    assert got.correct.all() and (got.pred == said).all()  # batch-mates and padding change nothing
    strict = evaluate(model, inner, {"b": None}, progress=False)
    assert not strict.correct.any()  # the answer starts 3 characters into the continuation
    absent = [Example(uid=i, prompt=p, answer=" " + s + "zz") for i, (p, s) in enumerate(zip(prompts, said, strict=True))]
    assert not generate_exact(model, absent, {"b": None}, max_new_tokens=12, match="contains", progress=False).correct.any()
    first = generate_exact(model, inner, {"b": None}, max_new_tokens=12, match="first-line", progress=False)
    assert first.correct.tolist() == ["\n" not in s.lstrip()[:7] for s in said]
    d = Disruption(rule="topk", k=2)
    gen = score(model, get_task("kv_lookup", n_pairs=2), {"b": None, "m": d}, scorer="contains", n=3, progress=False)
    forced = score(model, get_task("kv_lookup", n_pairs=2), {"b": None, "m": d}, n=3, progress=False)
    assert set(gen.scorer) == {"contains"} and set(forced.scorer) == {"strict"}
    assert gen.n_dims.tolist() == forced.n_dims.tolist()  # the prompt pass's selection, kept through decoding
    with pytest.raises(ValueError, match="unknown scorer"):
        score(model, get_task("kv_lookup"), {"b": None}, scorer="fuzzy")


def test_rank_scores_the_gold_answer_against_the_prompts_distractors(tiny_models):
    """Issue 26: ``rank`` = the gold answer's summed log-probability against the task's distractors,
    recomputed here by hand with one plain forward per (example, option); chance 1/(1 + distractors)."""
    from massmech.causal.evaluate import score
    from massmech.errors import TaskError

    model, task = tiny_models["tiny-llama"], get_task("kv_lookup", n_pairs=3)
    d = Disruption(rule="topk", k=2)
    df = score(model, task, {"b": None, "m": d}, scorer="rank", n=4, progress=False)
    assert set(df.scorer) == {"rank"} and len(df) == 8
    sizes = [1 + len(task.distractors(ex)) for ex in task.examples(4)]  # a value listed twice is one option
    assert task.chance(4, scorer="rank") == pytest.approx(np.mean([1 / k for k in sizes])) and max(sizes) == 3
    for ex, row in zip(task.examples(4), df[df.condition == "b"].itertuples(), strict=True):
        options = (ex.answer, *task.distractors(ex))
        assert len(set(options)) == len(options) and ex.answer not in options[1:]
        by_hand = []
        for option in options:
            prompt, (cont,) = encode(model, Example(uid=0, prompt=ex.prompt, options=(option,), label=0))
            ids = torch.tensor([prompt + cont])
            with torch.inference_mode():
                lp = torch.log_softmax(model.bridge(ids)[0].float(), -1)
            by_hand.append(sum(float(lp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(cont)))
        np.testing.assert_allclose(row.logprobs, by_hand, rtol=1e-4, atol=1e-4)
        assert row.correct == (int(np.argmax(by_hand)) == 0)
        assert row.margin == pytest.approx(by_hand[0] - max(by_hand[1:]), abs=1e-4)
    assert (df[df.condition == "m"].n_dims > 0).all()  # the disruption acts under rank too
    with pytest.raises(TaskError, match="no distractors"):  # passkey's prompt holds one number
        score(model, get_task("passkey"), {"b": None}, scorer="rank", n=2, progress=False)
    assert get_task("knowledge_conflict").distractors(get_task("knowledge_conflict").examples(1)[0]) == (" Oslo",)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-gpt2"])
def test_a_shared_prompt_pass_scores_options_as_one_sequence_each_does(tiny_models, name):
    """Issue 28: choice scoring reads each (example, condition) prompt once and continues its KV
    cache with every option; same logprobs (float rounding), verdicts and accounting as one
    sequence per option, at any batch width (batch invariance), with disruptions that select and
    place their values from the prompt (rotated mean: positions must be the unpadded ones)."""
    from massmech.causal.choice import ranked

    model = tiny_models[name]
    task = get_task("kv_lookup", n_pairs=4)
    examples = ranked(task, task.examples(6))
    d = Disruption(rule="topk", k=2)
    conds = {"baseline": None, "m": d, "v": d.as_control("matched")}
    if model.rope_or_none is not None:
        conds["rot"] = dataclasses.replace(d, stage="post", replace="rotated_mean")
    one = evaluate(model, examples, conds, batch_size=4, share_prompt=False, progress=False)
    for width in (1, 5):
        shared = evaluate(model, examples, conds, batch_size=width, progress=False)
        exact = ["condition", "uid", "group", "correct", "pred", "n_dims"]
        assert shared[exact].equals(one[exact])
        np.testing.assert_allclose(np.stack(shared.logprobs), np.stack(one.logprobs), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(shared.removed_variance, one.removed_variance, rtol=1e-4)
    assert (one[one.condition == "m"].n_dims > 0).all()


def test_a_shared_prompt_pass_is_used_only_where_the_answer_is_undisturbed(tiny_models, monkeypatch):
    """Under kv_cache="every_step" the options' positions are disrupted too: one sequence per
    option, never the shared prompt pass (which runs them without the intervention's hooks)."""
    import massmech.causal.evaluate as ev

    model, calls = tiny_models["tiny-llama"], []
    real = ev.option_logprobs
    monkeypatch.setattr(ev, "option_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    ex = [Example(uid=0, prompt="ab cd", options=(" a b", " c"), label=0)]
    d = Disruption(rule="topk", k=1)
    evaluate(model, ex, {"b": None, "m": d}, progress=False)
    assert calls == [1]
    evaluate(model, ex, {"b": None, "m": dataclasses.replace(d, kv_cache="every_step")}, progress=False)
    evaluate(model, ex, {"b": None, "m": d}, share_prompt=False, progress=False)
    assert calls == [1]


def test_a_hook_that_reads_whole_sequences_refuses_the_shared_prompt_pass(tiny_models):
    """W8A8's per-sequence activation scale (and KV ranges) in the options' pass of a shared prompt
    would come from the options' tokens alone: a clear error, not other numbers; one sequence per
    option scores it."""
    from massmech.errors import HookError
    from massmech.studies.quant.kv import quantize_activations

    model = tiny_models["tiny-llama"]
    ex = [Example(uid=0, prompt="ab cd", options=(" a b", " c"), label=0)]
    handles = quantize_activations(model)
    try:
        with pytest.raises(HookError, match="share_prompt=False"):
            evaluate(model, ex, {"b": None}, progress=False)
        assert len(evaluate(model, ex, {"b": None}, share_prompt=False, progress=False)) == 1
    finally:
        for h in handles:
            h.remove()


def test_a_generated_reply_ends_at_its_first_stop_token(tiny_models, monkeypatch):
    """``contains`` reads the reply up to its EOS / end of turn, where the paper's generate() stops:
    text the model goes on to produce after it (a new turn it invents) is not its answer."""
    import massmech.causal.evaluate as ev
    from massmech.core import bridge

    model = tiny_models["tiny-llama"]
    ex = Example(uid=0, prompt="The key is 12345. What is the key?", answer=" ?")
    prompt = encode(model, ex)[0]
    with torch.inference_mode():
        free = model.generate(torch.tensor([prompt]), torch.ones(1, len(prompt)), 12, stop=False)[0].tolist()
    stop = free[2]
    after = model.tokenizer.decode(free[free.index(stop) + 1 :]).strip()
    before = model.tokenizer.decode(free[: free.index(stop)])
    gold = next(after[i : i + 2] for i in range(len(after) - 1) if after[i : i + 2].strip() and after[i : i + 2] not in before)
    ex = dataclasses.replace(ex, answer=" " + gold)
    assert ev.generate_exact(model, [ex], {"b": None}, max_new_tokens=12, match="contains", progress=False).correct[0]
    monkeypatch.setattr(bridge, "stop_ids", lambda *a: (stop,))  # as if that token ended the reply
    monkeypatch.setattr(ev, "stop_ids", lambda *a: (stop,))
    df = ev.generate_exact(model, [ex], {"b": None}, max_new_tokens=12, match="contains", progress=False)
    assert not df.correct[0] and df.pred[0] == model.tokenizer.decode(free[: free.index(stop)], skip_special_tokens=True)

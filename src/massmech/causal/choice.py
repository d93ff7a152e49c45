"""Multiple-choice scoring that reads each prompt once: options continue the prompt's KV cache.

Scoring an example's options as separate sequences (``prompt + option``) reads its prompt once per
option: the ``rank`` scorer's kv_lookup has 8 options, so 8 prompt passes where one would do. Here
each (example, condition) prompt is read once, left-padded, with its condition's disruption
(:class:`~massmech.causal.intervention.Intervention`); every option then continues that prompt's
KV cache in one more pass, *without* the intervention's hooks. That is exact only where the
answer positions are undisturbed, which is what ``kv_cache="prefill"`` means (the prompt's
disrupted keys stay in the cache; the paper's ``q_len != 1`` guard); a condition under
``"every_step"`` is scored by :func:`massmech.causal.evaluate.evaluate`'s one-sequence-per-option
path, as are hooks that read a whole sequence's batch masks (the quantization study's dynamic
activation and per-channel KV scales: ``share_prompt=False``).

Positions count real tokens only, so a left-padded prompt is read at the positions it has alone,
as in the one-sequence path (right padding); the two paths agree to float rounding
(``tests/causal/test_evaluate.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from massmech.causal.batch import batch_masks
from massmech.causal.intervention import Intervention
from massmech.causal.tasks.base import Example, Task
from massmech.core import bridge as _bridge
from massmech.core.models import LoadedModel, pad_batch


def option_logprobs(
    model: LoadedModel,
    iv: Intervention,
    row_condition: Sequence[int],
    uids: Sequence[int],
    encoded: Sequence[tuple[list[int], list[list[int]]]],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[dict[tuple[int, int], list[float]], dict[tuple[int, int], tuple[int, float]]]:
    """Each option's summed log-probability, for every (example, condition), one prompt pass each.

    Args:
        model: The model.
        iv: The intervention of the conditions (its hooks are active during the prompt passes only).
        row_condition: Per condition, its index into ``iv.conditions``, or -1 for an undisturbed row.
        uids: Per example, its id (seeds its random controls, as in the one-sequence path).
        encoded: Per example, ``(prompt ids, [option ids, ...])`` (:func:`~massmech.causal.evaluate.encode`).
        batch_size: Prompts per pass; all their options continue them in one more pass (a row per
            option, each holding a copy of its prompt's KV cache: O options take O times the prompt
            pass's cache; on a GPU, lower ``batch_size`` for long prompts with many options).
        progress: Progress bar over batches.

    Returns:
        ``(ex, cond) -> [log-probability per option]`` and ``(ex, cond) -> (cells replaced, removed
        variance)`` of the prompt pass.

    >>> import massmech as mm
    >>> from massmech.causal.disruption import Disruption
    >>> model = mm.load_model("tiny-llama")
    >>> iv = Intervention(model, [None, Disruption(rule="topk", k=1)])
    >>> scores, dims = option_logprobs(model, iv, [-1, 1], [0], [([5, 6, 7], [[8], [9, 10]])], progress=False)
    >>> len(scores[(0, 1)]), dims[(0, 0)][0], dims[(0, 1)][0] > 0  # two options; the baseline replaced nothing
    (2, 0, True)
    """
    units = sorted(((i, c) for c in range(len(row_condition)) for i in range(len(encoded))),
                   key=lambda u: -len(encoded[u[0]][0]))
    device = model.device
    scores: dict[tuple[int, int], list[float]] = {}
    dims: dict[tuple[int, int], tuple[int, float]] = {}
    with torch.inference_mode():
        for s in tqdm(range(0, len(units), batch_size), desc="evaluate", unit="batch", disable=not progress):
            batch = units[s : s + batch_size]
            ids, mask = pad_batch([encoded[i][0] for i, _ in batch], model.pad_id, left=True)
            iv.set_batch(torch.tensor([row_condition[c] for _, c in batch]), mask,
                         row_ids=torch.tensor([uids[i] for i, _ in batch]))
            with iv.active(), batch_masks(mask.to(device)):
                last, cache = _bridge.prefill(model.bridge, ids.to(device), mask.to(device))
            if iv.passes != 1:
                raise RuntimeError(f"the intervention's end-of-forward hook fired {iv.passes} times, not once")
            tails = [(k, opt) for k, (i, _) in enumerate(batch) for opt in encoded[i][1]]
            first = torch.log_softmax(last, -1)  # predicts each option's first token
            longer = [(k, opt) for k, opt in tails if len(opt) > 1]  # a one-token option is scored by `first` alone
            # one pass for every option of the batch: a row per option, each with a copy of its prompt's cache
            # (passes of fewer rows read the weights once more each: 16% slower on kv_lookup on a CPU)
            rest = _continuations(model, cache, mask, longer) if longer else None
            at = 0
            for k, opt in tails:
                lp = float(first[k, opt[0]])
                if len(opt) > 1:
                    lp += float(rest[at : at + len(opt) - 1].gather(-1, torch.tensor(opt[1:], device=rest.device)[:, None]).sum())
                    at += len(opt) - 1
                i, c = batch[k]
                scores.setdefault((i, c), []).append(lp)
            for k, (i, c) in enumerate(batch):
                dims[(i, c)] = (int(iv.last_selected[k]), float(iv.last_removed[k]))
    return scores, dims


def _continuations(model: LoadedModel, cache, mask, tails: list[tuple[int, list[int]]]) -> torch.Tensor:
    """Log-softmax ``[sum(len - 1), vocab]`` at every option position that predicts its next token."""
    device = model.device
    ids, tail_mask = pad_batch([opt for _, opt in tails], model.pad_id)
    where = torch.tensor([(j, t) for j, (_, opt) in enumerate(tails) for t in range(len(opt) - 1)])
    index = torch.tensor([k for k, _ in tails])
    with batch_masks(tail_mask.to(device), torch.zeros_like(tail_mask).to(device), whole=False):  # no prompt token here
        logits = _bridge.continue_prompts(model.bridge, cache, mask.to(device), index, ids.to(device),
                                          tail_mask.to(device), where[:, 0], where[:, 1])
    return torch.log_softmax(logits, -1)


def ranked(task: Task, examples: Sequence[Example]) -> list[Example]:
    """``examples`` as multiple choice for the ``rank`` scorer: the gold answer (option 0) and the
    task's distractors, same uid, prompt and group.

    Raises:
        TaskError: The task has no distractors (:meth:`~massmech.causal.tasks.base.Task.distractors`).

    >>> from massmech.causal.tasks.builtin import get_task
    >>> task = get_task("kv_lookup", n_pairs=3)
    >>> ex = ranked(task, task.examples(1))[0]; ex.options, ex.label
    ((' 886', ' 678', ' 347'), 0)
    """
    return [replace(ex, answer="", options=(ex.answer, *task.distractors(ex)), label=0) for ex in examples]

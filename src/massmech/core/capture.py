"""Streaming capture of Q/K/V statistics per (site, stage, layer, head, dim).

One forward pass per batch, with hooks that reduce each activation to four running statistics
and drop it: sum of squares, sum, max |x| and the token count. Memory therefore does not grow
with the number of tokens. Padding (and, optionally, each sequence's first token) is excluded,
so a batched capture equals an unbatched one. Per-batch reductions run in fp32 and accumulate
in fp64, on the device of each layer (a model sharded over GPUs keeps each layer's statistics
on its own GPU); the host never waits for the device between batches, and the statistics move
to the host once, at the end. The result is a :class:`~massmech.core.qkvstats.QKVStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from massmech.core.models import LoadedModel, pad_batch
from massmech.core.qkvstats import Key, QKVStats
from massmech.core.sites import CAPTURE_STAGES, SITES, to_heads
from massmech.errors import CaptureError


def _as_token_lists(model: LoadedModel, data: Sequence | Tensor) -> list[list[int]]:
    if isinstance(data, str):
        data = [data]
    if isinstance(data, Tensor):
        if data.ndim != 2:
            raise CaptureError(f"a token tensor must be [batch, pos], got {tuple(data.shape)}")
    data = list(data)  # a tensor becomes its 1-D rows, checked below like any other input
    if not data:
        raise CaptureError("empty corpus: pass at least one text or token sequence")
    if all(isinstance(x, str) for x in data):
        seqs = model.tokenize(data)
    elif all(isinstance(x, Tensor) and x.ndim == 1 for x in data):
        seqs = [x.tolist() for x in data]
    elif all(isinstance(x, Sequence) and not isinstance(x, str) for x in data):
        seqs = [[int(t) for t in x] for x in data]
    else:
        raise CaptureError("pass texts (str), token id lists, or 1-D token tensors — not a mix")
    for i, s in enumerate(seqs):
        if not s:
            raise CaptureError(f"sequence {i} is empty")
        if len(s) > model.info.n_ctx:
            raise CaptureError(
                f"sequence {i} has {len(s)} tokens, more than {model.info.name}'s context of "
                f"{model.info.n_ctx}: split it into windows first (massmech.core.corpus.token_windows)"
            )
    return seqs


def _resolve_keys(
    model: LoadedModel, sites: Sequence[str], stages: Sequence[str] | None
) -> list[Key]:
    for s in sites:
        if s not in SITES:
            raise CaptureError(f"unknown site {s!r}; sites are {SITES}")
    if stages is not None:
        for st in stages:
            if st not in CAPTURE_STAGES:
                raise CaptureError(f"unknown stage {st!r}; stages are {CAPTURE_STAGES}")
    keys = [
        (s, st)
        for s in sites
        for st in model.stages(s)
        if stages is None or st in stages
    ]
    if stages is not None:
        for st in stages:
            if not any(k[1] == st for k in keys):
                raise CaptureError(
                    f"{model.info.name} has no stage {st!r} for sites {tuple(sites)}"
                    + (" (no post-RoPE hooks: not a RoPE model?)" if st == "post" else "")
                )
    if not keys:
        raise CaptureError(f"nothing to capture for sites={tuple(sites)}, stages={stages}")
    return keys


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device``; to a GPU through pinned memory, without waiting for the GPU."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _to_host(
    acc: dict[tuple[Key, int], tuple[Tensor, Tensor, Tensor]], keys: Sequence[Key], n_layers: int
) -> tuple[dict[Key, Tensor], dict[Key, Tensor], dict[Key, Tensor]]:
    """``(sumsq, total, max_abs)``: per key a CPU tensor ``[layer, head, d]`` of the accumulators.

    One copy per device: the accumulators living on a device are concatenated there and moved at once.
    """
    by_device: dict[torch.device, list[tuple[Key, int]]] = {}
    for key in keys:
        for li in range(n_layers):
            by_device.setdefault(acc[(key, li)][0].device, []).append((key, li))
    host: dict[tuple[Key, int], list[Tensor]] = {}
    for items in by_device.values():
        flat = torch.cat([t.flatten() for item in items for t in acc[item]]).cpu()
        at = 0
        for item in items:
            host[item] = []
            for t in acc[item]:
                host[item].append(flat[at : at + t.numel()].view(t.shape))
                at += t.numel()
    return tuple(  # type: ignore[return-value]
        {key: torch.stack([host[(key, li)][j] for li in range(n_layers)]) for key in keys} for j in range(3)
    )


def _resolve_layers(model: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    """The layer indices to capture (default all), each checked against the model's depth."""
    layer_list = list(range(model.info.n_layers)) if layers is None else [int(x) for x in layers]
    if not layer_list:
        raise CaptureError("no layers selected")
    for li in layer_list:
        if not 0 <= li < model.info.n_layers:
            raise CaptureError(f"layer {li} out of range: {model.info.name} has {model.info.n_layers}")
    return layer_list


class _Accumulator:
    """The streaming sums of one capture: per (key, layer index) ``(sumsq, total, max_abs)``,
    fp64, on the device of that layer's activations (a sharded model keeps each layer's statistics
    on its own GPU), created by the layer's first hook call, updated in place on the device and
    never read by the host until the end; and how often each hook fired."""

    def __init__(self, model: LoadedModel) -> None:
        self.heads = {"q": model.info.n_heads, "k": model.info.n_kv_heads, "v": model.info.n_kv_heads}
        self.device = torch.device(model.info.device)  # where the ids go (the embedding's device)
        self.sums: dict[tuple[Key, int], tuple[Tensor, Tensor, Tensor]] = {}
        self.fired: dict[tuple[Key, int], int] = {}
        # this batch's counted tokens as (row, position) indices, per device: integer indexing has
        # a size known to the host, where a boolean mask would make each hook wait for the device
        self.select: dict[torch.device, tuple[Tensor, Tensor] | None] = {}

    def count_only(self, sel: Tensor) -> None:
        """The tokens of the next batch to count (``sel``: ``[b, pos]`` bool, on the host)."""
        self.select.clear()
        rows, positions = sel.nonzero(as_tuple=True)
        self.select[self.device] = None if bool(sel.all()) else (_to_device(rows, self.device), _to_device(positions, self.device))

    def _selection(self, device: torch.device) -> tuple[Tensor, Tensor] | None:
        if device not in self.select:
            here = self.select[self.device]
            self.select[device] = None if here is None else (here[0].to(device), here[1].to(device))
        return self.select[device]

    def hook(self, key: Key, li: int, heads_first: bool) -> Callable[[Tensor, object], None]:
        """The hook that adds one (site, stage, layer)'s activations to its sums."""
        def fn(x: Tensor, hook: object) -> None:
            self.fired[(key, li)] = self.fired.get((key, li), 0) + 1
            x = to_heads(x, heads_first, self.heads[key[0]])  # [b, pos, head, d]
            if (key, li) not in self.sums:
                self.sums[(key, li)] = tuple(torch.zeros(x.shape[2:], dtype=torch.float64, device=x.device) for _ in range(3))
            sumsq, total, max_abs = self.sums[(key, li)]
            sel = self._selection(x.device)
            xs = x.flatten(0, 1) if sel is None else x[sel]  # [tokens, head, d], in (row, position) order
            # max |x| is exact in any dtype: the extremes of the activation itself (no |x| copy)
            torch.maximum(max_abs, torch.maximum(xs.amax(0), xs.amin(0).neg()), out=max_abs)
            # fp32 per batch, fp64 across batches; one fp32 temporary (the copy of a half-precision
            # activation, squared in place after its sum; for fp32, x * x)
            xf = xs.float()
            total += xf.sum(0)
            own = xf.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # a copy: ours to square
            sumsq += (xf.square_() if own else xf * xf).sum(0)

        return fn


def _check_finite(sumsq: dict[Key, Tensor], max_abs: dict[Key, Tensor], layer_list: list[int]) -> None:
    """A :class:`CaptureError` naming the site, stage and layers of any NaN/inf statistic."""
    for key in sumsq:
        if not (torch.isfinite(sumsq[key]).all() and torch.isfinite(max_abs[key]).all()):
            bad_layers = sorted({layer_list[i] for i in range(len(layer_list)) if not torch.isfinite(sumsq[key][i]).all()})
            raise CaptureError(
                f"non-finite activations (NaN/inf) at site {key[0]} stage {key[1]}, layers "
                f"{bad_layers or 'max_abs only'}: check the model's dtype (fp16 overflow?) and weights"
            )


def capture_stats(
    model: LoadedModel,
    data: Sequence[str] | Sequence[Sequence[int]] | Tensor,
    *,
    sites: Sequence[str] = SITES,
    stages: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    exclude_first_token: bool = False,
    progress: bool = True,
) -> QKVStats:
    """Capture per-(site, stage, layer, head, dim) statistics over a corpus in one streaming pass.

    Args:
        model: A :class:`~massmech.core.models.LoadedModel`.
        data: Texts (tokenized with the model's tokenizer and its special tokens), token id
            sequences, or a ``[batch, pos]`` tensor of ids (no padding).
        sites: Any of ``"q"``, ``"k"``, ``"v"``.
        stages: ``"pre"`` and/or ``"post"`` RoPE (and ``"raw"``, before QK-norm, on a QK-norm
            model); ``None`` = every stage the model has. V has only ``"pre"``; a requested stage
            no requested site has is an error.
        layers: Layer indices (default all).
        batch_size: Sequences per forward pass (sequences are sorted by length to limit padding).
        exclude_first_token: Leave out each sequence's first token (often an attention sink).
        progress: Show a progress bar over batches.

    Returns:
        :class:`QKVStats`.

    Raises:
        CaptureError: Empty corpus, sequence longer than the context, unknown site/stage, a
            hook that did not fire or fired twice, or NaN/inf activations.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> one = capture_stats(model, [[5, 6, 7, 8], [9, 10]], batch_size=2, progress=False)
    >>> one   # padding is not counted: 6 tokens
    QKVStats('tiny-llama', layers=0..1 (2), sites=q.pre,q.post,k.pre,k.post,v.pre, tokens=6, sequences=2, d_head=16)
    >>> import torch
    >>> torch.allclose(one.norm("k"), capture_stats(model, [[5, 6, 7, 8], [9, 10]], batch_size=1, progress=False).norm("k"))
    True
    """
    if batch_size < 1:
        raise CaptureError(f"batch_size must be >= 1, got {batch_size}")
    keys = _resolve_keys(model, sites, stages)
    layer_list = _resolve_layers(model, layers)
    seqs = _as_token_lists(model, data)
    if exclude_first_token and all(len(s) == 1 for s in seqs):
        raise CaptureError("exclude_first_token leaves no token: every sequence has length 1")
    acc = _Accumulator(model)
    names = {}
    fwd_hooks = []
    for key in keys:
        for i, layer in enumerate(layer_list):
            name, heads_first = model.hook_name(key[0], key[1], layer)
            names[(key, i)] = name
            fwd_hooks.append((name, acc.hook(key, i, heads_first)))

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    n_tokens = 0
    with torch.inference_mode(), model.hooks(fwd_hooks):
        for bi, batch in enumerate(tqdm(batches, desc="capture", unit="batch", disable=not progress)):
            ids, mask = pad_batch([seqs[i] for i in batch], pad_id=0)  # masked: the pad id is never seen
            sel = mask.clone()
            if exclude_first_token:
                sel[:, 0] = False
            n_tokens += int(sel.sum())  # counted on the host: the masks are built here
            acc.count_only(sel)
            model.forward(_to_device(ids, acc.device), None if bool(mask.all()) else _to_device(mask.long(), acc.device),
                          until=model.end_hook)  # Q/K/V only: no final norm or unembedding
            bad = [names[k] for k in names if acc.fired.get(k, 0) != bi + 1]
            if bad:
                raise CaptureError(f"hooks did not fire exactly once per forward on {model.info.name}: {bad[:6]}")
    sumsq, total, max_abs = _to_host(acc.sums, keys, len(layer_list))
    _check_finite(sumsq, max_abs, layer_list)
    return QKVStats(
        model=model.info.name,
        layers=tuple(layer_list),
        n_tokens=n_tokens,
        n_sequences=len(seqs),
        sumsq=sumsq,
        total=total,
        max_abs=max_abs,
        rope=model.rope_or_none,
        exclude_first_token=exclude_first_token,
        meta={
            "batch_size": batch_size,
            "sites": list(sites),
            "stages": None if stages is None else list(stages),
            "max_len": max(len(s) for s in seqs),
        },
    )

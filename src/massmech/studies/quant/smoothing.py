"""Outlier-aware weight quantization by scale migration: SmoothQuant and AWQ.

Both move a per-input-channel scale ``s`` from the activations into the weights: the op that
produces the activation (an RMSNorm, or a linear layer's output rows) is divided by ``s`` and
every linear layer that reads it (the *balance* layers) is multiplied by ``s`` along its input.
Before quantization the model computes the same function (tested); after it, the weights of
the large-activation channels are represented more finely.

* :func:`smoothquant` (Xiao et al., 2023): ``s_j = max|X_j|**alpha / max_i|W_ij|**(1 - alpha)``
  over the balance layers, with ``max|X_j|`` taken as half the calibration spread
  ``(max - min) / 2`` of channel ``j`` as llmcompressor does (equal for a symmetric channel; at
  ``alpha = 0.5`` the scales equal llmcompressor's, otherwise they differ by the constant factor
  ``2**(1 - 2 alpha)``, which no per-channel or per-tensor quantizer sees), folded into the norms in front of Q/K/V and of the MLP. The caller
  then quantizes weights and activations (W8A8: :mod:`massmech.studies.quant.methods`).
* :func:`awq` (Lin et al., 2024): per mapping, a grid search over
  ``s = mean|X|**r / mean|W~|**(1 - r)`` (``W~``: |W| normalised by its group max; plus the
  identity) that minimises the mean squared error of the parent module's output when the
  balance layers hold ``Q(W s) / s``; then round-to-nearest of every linear of the block.
  Blocks are processed in order; each is calibrated on the outputs of the blocks before it,
  smoothed but not yet quantized (as in AutoAWQ and llmcompressor).

The mappings follow llmcompressor's: ``input_layernorm -> q,k,v``, ``v_proj -> o_proj`` (AWQ, when
the widths match, i.e. no grouped KV heads), the MLP's norm ``-> gate, up`` and ``up -> down``
(AWQ). For Gemma-3 the MLP's norm is ``pre_feedforward_layernorm`` (llmcompressor's SmoothQuant
uses ``post_attention_layernorm``, which in Gemma-3 normalises the attention output instead), its
RMSNorm scales by ``1 + weight`` (folded as such), and AWQ leaves ``input_layernorm -> q,k,v``
out, as llmcompressor does for QK-norm models. ``tests/studies/test_smoothing.py`` compares both
methods with llmcompressor's on a tiny Llama.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from massmech.core import decoder
from massmech.errors import SmoothingError


@dataclass(frozen=True)
class ScaleMap:
    """One scale migration inside a decoder block (module names relative to the block).

    Attributes:
        smooth: The op whose output is divided by ``s`` (an RMSNorm or a linear layer).
        balance: The linear layers reading that output, multiplied by ``s`` along their input.
        parent: The module whose output AWQ's loss compares (it contains the balance layers).
    """

    smooth: str
    balance: tuple[str, ...]
    parent: str


def block_maps(block: nn.Module, *, awq: bool) -> list[ScaleMap]:
    """The scale migrations of one decoder block (Llama, Qwen2, Mistral, Gemma-3 layouts; a
    block inside a TransformerLens bridge works too), named as the block names its modules.

    Raises:
        SmoothingError: The block lacks the expected attention/MLP projections (e.g. GPT-2).
    """
    missing = decoder.missing_roles(block, ("q", "k", "v", "o", "gate", "up", "down", "attn_norm"))
    if missing:
        raise SmoothingError(
            f"{type(block).__name__} is not a Llama/Qwen2/Gemma-3 style block (missing the "
            f"{missing} modules): smoothquant and awq support those decoders"
        )

    def name(*roles: str) -> tuple[str, ...]:
        return tuple(decoder.role_name(block, r) for r in roles)

    qkv = ScaleMap(*name("attn_norm"), name("q", "k", "v"), *name("attn"))
    mlp = ScaleMap(*name("mlp_norm"), name("gate", "up"), *name("mlp"))
    if not awq:
        return [qkv, mlp]
    # Gemma-3 blocks (a norm before and after each sublayer): llmcompressor's AWQ leaves the
    # norm in front of Q/K/V alone
    maps = [] if decoder.sandwich_norms(block) else [qkv]
    if decoder.module(block, "v").out_features == decoder.module(block, "o").in_features:
        maps.append(ScaleMap(*name("v"), name("o"), *name("o")))
    return [*maps, mlp, ScaleMap(*name("up"), name("down"), *name("down"))]


@torch.no_grad()
def fold_scales(block: nn.Module, m: ScaleMap, s: Tensor) -> None:
    """Divide ``m.smooth``'s output by ``s`` and multiply the balance layers' inputs by it."""
    smooth = block.get_submodule(m.smooth)
    s = s.to(smooth.weight.device)
    for name in m.balance:
        lin = block.get_submodule(name)
        lin.weight.mul_(s.to(lin.weight.dtype)[None, :])
    if isinstance(smooth, nn.Linear):  # its output rows
        smooth.weight.div_(s.to(smooth.weight.dtype)[:, None])
        if smooth.bias is not None:
            smooth.bias.div_(s.to(smooth.bias.dtype))
    elif decoder.scales_by_one_plus(smooth):  # Gemma RMSNorm scales by (1 + weight)
        w = smooth.weight.float()
        smooth.weight.copy_(((1 + w) / s - 1).to(smooth.weight.dtype))
    else:
        smooth.weight.div_(s.to(smooth.weight.dtype))
        if getattr(smooth, "bias", None) is not None:
            smooth.bias.div_(s.to(smooth.bias.dtype))


# ------------------------------------------------------------------------- calibration
@dataclass
class _Calls:
    """What one calibration pass through a block recorded, per batch."""

    parent_inputs: dict[str, list[tuple[tuple, dict]]]
    act_stat: dict[str, Tensor]  # balance input: sum |x| (AWQ) or max |x| (SmoothQuant), per channel
    n_tokens: int = 0


def _run_block(block: nn.Module, hidden: Tensor, kw: dict) -> Tensor:
    out = block(hidden, **kw)
    return out[0] if isinstance(out, tuple) else out


def _record(block: nn.Module, maps: list[ScaleMap], hidden: list[Tensor], kwargs: list[dict], stat: str) -> _Calls:
    """Run the block over the batches, keeping per input channel of the balance layers the mean
    ``|x|`` sum and every parent's inputs (``stat="mean"``, AWQ), or half the spread
    ``(max x - min x) / 2`` (``stat="range"``, SmoothQuant)."""
    calls = _Calls({m.parent: [] for m in maps}, {})
    lo: dict[str, Tensor] = {}
    handles = []
    for m in maps:
        def keep_inputs(mod: nn.Module, args: tuple, kw: dict, key: str = m.parent) -> None:
            calls.parent_inputs[key].append((args, dict(kw)))

        def keep_stat(mod: nn.Module, args: tuple, key: str = m.smooth) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # [tokens, channels]
            old = calls.act_stat.get(key)
            if stat == "mean":
                calls.act_stat[key] = x.abs().sum(0) + (0 if old is None else old)
            else:
                hi, low = x.amax(0), x.amin(0)
                calls.act_stat[key] = hi if old is None else torch.maximum(old, hi)
                lo[key] = low if key not in lo else torch.minimum(lo[key], low)
            if key == maps[0].smooth:
                calls.n_tokens += x.shape[0]

        if stat == "mean":
            handles.append(block.get_submodule(m.parent).register_forward_pre_hook(keep_inputs, with_kwargs=True))
        handles.append(block.get_submodule(m.balance[0]).register_forward_pre_hook(keep_stat))
    try:
        for h, kw in zip(hidden, kwargs, strict=True):
            _run_block(block, h, kw)
    finally:
        for h in handles:
            h.remove()
    for key, low in lo.items():  # half the spread max - min: max|x| for a symmetric channel
        calls.act_stat[key] = (calls.act_stat[key] - low) / 2
    return calls


# --------------------------------------------------------------------------- SmoothQuant
@torch.no_grad()
def smoothquant(hf_model: nn.Module, windows: Sequence[Sequence[int]], *, alpha: float = 0.5, batch_size: int = 4, progress: bool = False) -> dict[str, Tensor]:
    """Fold SmoothQuant scales into ``hf_model`` in place (function unchanged, weights smoothed).

    Args:
        hf_model: A Hugging Face causal LM (Llama, Qwen2, Gemma-3 layouts).
        windows: Calibration token windows, all of one length.
        alpha: Migration strength in [0, 1]: 0 leaves activations alone, 1 moves all their range.
        batch_size: Windows per calibration forward pass.

    Returns:
        The scales, by ``"layers.{i}.{smooth}"``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise SmoothingError(f"alpha must be in [0, 1], got {alpha}")
    blocks = decoder.blocks(hf_model)
    hidden, kwargs = decoder.block_inputs(hf_model, windows, batch_size)
    plans = []
    for i, block in enumerate(tqdm(blocks, desc="smoothquant calibration", disable=not progress)):
        maps = block_maps(block, awq=False)
        calls = _record(block, maps, hidden, kwargs[i], "range")
        hidden = [_run_block(block, h, kw) for h, kw in zip(hidden, kwargs[i], strict=True)]
        plans.append((block, maps, calls))
    scales = {}
    for i, (block, maps, calls) in enumerate(plans):  # smoothing keeps the function: fold after
        for m in maps:
            x_max = calls.act_stat[m.smooth]  # [channels]
            w_max = torch.stack([block.get_submodule(b).weight.detach().float().abs().amax(0) for b in m.balance]).amax(0)
            s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(1e-5)
            s = torch.where(w_max > 0, s, torch.ones_like(s))
            fold_scales(block, m, s)
            scales[f"layers.{i}.{m.smooth}"] = s
    return scales


# ----------------------------------------------------------------------------------- AWQ
def _group_normalised_mean(weights: list[Tensor], group_size: int | None) -> Tensor:
    """Mean over output rows of ``|W|`` divided by its group's max, per input channel."""
    rows = []
    for w in weights:
        w = w.detach().float().abs()
        g = w.shape[1] if group_size is None else group_size
        grouped = w.reshape(w.shape[0], -1, g)  # [out, groups, g]
        rows.append((grouped / (grouped.amax(-1, keepdim=True) + 1e-6)).reshape(w.shape))
    return torch.cat(rows).mean(0)


@dataclass(frozen=True)
class ScaleSearch:
    """One mapping's AWQ grid search (filled in by ``awq(..., trace={})``).

    Attributes:
        ratios: The grid: -1 (the identity) and the ratios ``r`` in [0, 1].
        losses: The mean squared error of the parent's output for each candidate.
        scales: The candidate scales ``[candidates, channels]``.
        noise: Per candidate, how far its loss moves when ``s`` is jittered in its last bits
            (relative 1e-6 per channel, four seeded draws): the numerical noise of the loss.
            A quantizer that puts values on rounding ties (compressed-tensors' symmetric int4
            maps each group's largest weight to exactly +-7.5) makes this noise large, and which
            candidate wins then depends on how the CPU rounds the last bit.
        best: Index of the chosen candidate (the first of equal losses).
    """

    ratios: tuple[float, ...]
    losses: tuple[float, ...]
    scales: Tensor
    noise: tuple[float, ...]
    best: int


def _candidate(ratio: float, x_mean: Tensor, w_mean: Tensor) -> Tensor:
    """AWQ's scale for one grid ratio (-1: the identity), normalised to a geometric mean of one."""
    if ratio < 0:
        return torch.ones_like(x_mean)
    s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


def _search(block: nn.Module, m: ScaleMap, calls: _Calls, quantize: Callable[[Tensor], Tensor], ratios: list[float],
            group_size: int | None, jitter: int) -> ScaleSearch:
    """Grid-search one mapping's scale; the balance layers are left as they were."""
    parent = block.get_submodule(m.parent)
    inputs = calls.parent_inputs[m.parent]

    def run() -> list[Tensor]:
        outs = [parent(*a, **kw) for a, kw in inputs]
        return [o[0] if isinstance(o, tuple) else o for o in outs]

    ref = run()
    lins = [block.get_submodule(b) for b in m.balance]
    orig = [lin.weight.detach().clone() for lin in lins]

    def loss(s: Tensor) -> float:
        for lin, w in zip(lins, orig, strict=True):
            lin.weight.copy_((quantize(w * s[None, :]) / s[None, :]).to(w.dtype))
        err = sum(float((a.float() - b.float()).pow(2).sum()) for a, b in zip(run(), ref, strict=True))
        return err / sum(r.numel() for r in ref)

    x_mean = calls.act_stat[m.smooth] / calls.n_tokens
    w_mean = _group_normalised_mean(orig, group_size)
    scales = torch.stack([_candidate(r, x_mean, w_mean) for r in ratios])
    losses = [loss(s) for s in scales]
    noise = []
    gen = torch.Generator().manual_seed(0)
    for s, base in zip(scales, losses, strict=True):  # only when traced: 4 extra passes per candidate
        shaken = [loss(s * (1 + 1e-6 * (2 * torch.rand(s.shape, generator=gen) - 1))) for _ in range(jitter)]
        noise.append(max((abs(x - base) for x in shaken), default=0.0))
    for lin, w in zip(lins, orig, strict=True):
        lin.weight.copy_(w)
    best = min(range(len(losses)), key=lambda j: (losses[j], j))
    return ScaleSearch(tuple(ratios), tuple(losses), scales, tuple(noise), best)


@torch.no_grad()
def awq(
    hf_model: nn.Module,
    windows: Sequence[Sequence[int]],
    quantize: Callable[[Tensor], Tensor],
    *,
    fold_only: bool = False,
    n_grid: int = 20,
    group_size: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
    trace: dict[str, ScaleSearch] | None = None,
) -> dict[str, float]:
    """Activation-aware weight quantization of ``hf_model``, in place.

    Args:
        hf_model: A Hugging Face causal LM (Llama, Qwen2, Gemma-3 layouts).
        windows: Calibration token windows, all of one length.
        quantize: Weight fake-quant ``[out, in] -> [out, in]`` used in the search and then applied
            to every linear layer of each block.
        fold_only: Search and fold the scales but leave the weights unquantized (the model's
            function is unchanged; for tests).
        n_grid: Grid points: the identity plus ``n_grid - 1`` ratios ``r`` in [0, 1].
        group_size: The quantizer's group size (for the weight normalisation; ``None``: per row).
        batch_size: Windows per calibration forward pass.
        trace: A dict that receives each mapping's :class:`ScaleSearch` (every candidate's loss
            and its numerical noise; costs four extra passes per candidate).

    Returns:
        The chosen ratio per mapping, by ``"layers.{i}.{smooth}"`` (-1: the identity).

    >>> import torch
    >>> from massmech.core.loading import load_hf
    >>> from massmech.studies.quant.methods import rtn
    >>> hf, *_ = load_hf("tiny-llama")
    >>> windows = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0)).tolist()
    >>> trace = {}
    >>> ratios = awq(hf, windows, lambda w: rtn(w, 4, 16), group_size=16, fold_only=True, trace=trace)
    >>> sorted(ratios) == sorted(trace), len(trace["layers.0.mlp.up_proj"].losses)
    (True, 20)
    """
    if n_grid < 3:
        raise SmoothingError(f"n_grid must be >= 3, got {n_grid}")
    ratios = [-1.0] + [k / (n_grid - 2) for k in range(n_grid - 1)]  # -1: the identity
    blocks = decoder.blocks(hf_model)
    hidden, kwargs = decoder.block_inputs(hf_model, windows, batch_size)
    chosen = {}
    for i, block in enumerate(tqdm(blocks, desc="awq", disable=not progress)):
        maps = block_maps(block, awq=True)
        calls = _record(block, maps, hidden, kwargs[i], "mean")
        for m in maps:
            found = _search(block, m, calls, quantize, ratios, group_size, jitter=4 if trace is not None else 0)
            fold_scales(block, m, found.scales[found.best])
            chosen[f"layers.{i}.{m.smooth}"] = found.ratios[found.best]
            if trace is not None:
                trace[f"layers.{i}.{m.smooth}"] = found
        hidden = [_run_block(block, h, kw) for h, kw in zip(hidden, kwargs[i], strict=True)]
        if not fold_only:
            for mod in block.modules():
                if isinstance(mod, nn.Linear):
                    mod.weight.copy_(quantize(mod.weight))
    return chosen


def smoothing_names(hf_model: nn.Module, *, awq: bool) -> list[str]:
    """Names of the parameters a smoothing method may change besides the linear weights
    (the norms' weights and the smooth linears' biases), for change checks."""
    out = []
    for i, block in enumerate(decoder.blocks(hf_model)):
        for m in block_maps(block, awq=awq):
            mod: Any = block.get_submodule(m.smooth)
            out.append(f"layers.{i}.{m.smooth}.weight")
            if getattr(mod, "bias", None) is not None:
                out.append(f"layers.{i}.{m.smooth}.bias")
    return out

"""Controls matched in effect: as much change of the next-token distribution on neutral text.

A control matched in size (as many dims, or as much removed variance) need not be matched in
effect: a small change in a massive K dim is multiplied by a huge Q value in the same dim. An
effect-matched control removes random non-selected dims until the model's next-token
distribution on *neutral* text (a corpus, not the task) moves as much as under the disruption:

``KL = mean over tokens of KL(p_clean || p_disrupted)`` (nats, each window's every position).

:func:`kl_match` searches the control's ``control_scale`` (a multiple of the matched control's
removed variance, or of the random control's count) on a log scale until the control's KL is
within ``tol`` of the disruption's, and reports KL, removed variance and removed energy of both
side by side. Where even the largest scale falls short, it says so (``matched=False``): then no
control of that kind moves the model as much, which is itself a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from massmech.causal.disruption import Disruption
from massmech.causal.intervention import Intervention
from massmech.causal.vocabulary import MATCHED_CONTROLS
from massmech.core.models import LoadedModel
from massmech.errors import DisruptionError

#: Tolerance of the match: the control's KL within 10% of the disruption's (the issue's rule).
KL_TOL = 0.10


@dataclass(frozen=True)
class NeutralEffect:
    """What one condition does on the neutral windows.

    Attributes:
        kl: Mean next-token KL(clean || disrupted), nats per token.
        removed_variance: Mean over windows of the removed share of token variance.
        removed_energy: Mean over windows of the squared change as a share of the sites' energy.
        n_tokens: Tokens the KL averages over.

    >>> NeutralEffect(kl=0.02, removed_variance=0.05, removed_energy=0.001, n_tokens=2048).kl
    0.02
    """

    kl: float
    removed_variance: float
    removed_energy: float
    n_tokens: int


def _clean_logprobs(model: LoadedModel, windows: Tensor, batch_size: int) -> list[Tensor]:
    with torch.inference_mode():
        return [torch.log_softmax(model.logits(windows[i : i + batch_size].to(model.device)).float(), -1)
                for i in range(0, len(windows), batch_size)]


def neutral_effect(model: LoadedModel, disruption: Disruption, windows: Tensor, *, batch_size: int = 8,
                   clean: list[Tensor] | None = None) -> NeutralEffect:
    """KL, removed variance and removed energy of ``disruption`` on ``windows`` (``[n, pos]``,
    no padding). Each window is its own prompt with a stable row id (its index), so the random
    controls do not depend on ``batch_size``.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> windows = torch.randint(3, 200, (4, 12), generator=torch.Generator().manual_seed(0))
    >>> e = neutral_effect(model, Disruption(rule="topk", k=1), windows)
    >>> e.kl > 0, 0 < e.removed_energy <= e.removed_variance <= 1, e.n_tokens
    (True, True, 48)
    """
    clean = clean if clean is not None else _clean_logprobs(model, windows, batch_size)
    iv = Intervention(model, [disruption])
    kl = variance = energy = 0.0
    with torch.inference_mode(), iv.active():
        for bi, start in enumerate(range(0, len(windows), batch_size)):
            ids = windows[start : start + batch_size]
            iv.set_batch(torch.zeros(len(ids), dtype=torch.long), row_ids=torch.arange(start, start + len(ids)))
            logp = torch.log_softmax(model.logits(ids.to(model.device)).float(), -1)
            p = clean[bi]
            kl += float((p.exp() * (p - logp)).sum(-1).sum())
            variance += float(iv.last_removed.sum())
            energy += float(iv.last_removed_energy.sum())
    n = len(windows)
    return NeutralEffect(kl / windows.numel(), variance / n, energy / n, int(windows.numel()))


@dataclass(frozen=True)
class KLMatch:
    """The outcome of :func:`kl_match`.

    Attributes:
        disruption: The disruption (the arm the control is matched to).
        control: The control, with the ``control_scale`` found.
        target: The disruption's effect on the neutral windows.
        effect: The control's effect at that scale.
        matched: Whether the control's KL is within ``tol`` of the target's.
        tol: The tolerance (relative).
        trace: Every ``(scale, kl)`` tried, in order.

    >>> e = NeutralEffect(0.5, 0.1, 0.01, 10)
    >>> KLMatch(Disruption(rule="topk", k=1), Disruption(rule="topk", k=1).as_control("matched", 2.0), e, e, True, 0.1,
    ...         ((1.0, 0.2), (2.0, 0.5)))
    KLMatch('qk.pre.top1', KL 0.5 vs control x2 0.5, matched=True)
    """

    disruption: Disruption
    control: Disruption
    target: NeutralEffect
    effect: NeutralEffect
    matched: bool
    tol: float
    trace: tuple[tuple[float, float], ...]

    def row(self) -> dict:
        """The match as one flat row (KL, removed variance and energy of both arms side by side).

        >>> m = KLMatch(Disruption(), Disruption(control="matched", control_scale=2.0), NeutralEffect(0.5, 0.1, 0.01, 10),
        ...             NeutralEffect(0.52, 0.3, 0.02, 10), True, 0.1, ((1.0, 0.2), (2.0, 0.52)))
        >>> m.row()["control_scale"], m.row()["kl_control"], m.row()["evaluations"]
        (2.0, 0.52, 2)
        """
        t, e = asdict(self.target), asdict(self.effect)
        return {"condition": self.disruption.label(), "control": self.control.control,
                "control_scale": self.control.control_scale, "matched": self.matched, "tol": self.tol,
                **{f"{k}_massive": v for k, v in t.items() if k != "n_tokens"},
                **{f"{k}_control": v for k, v in e.items() if k != "n_tokens"},
                "n_tokens": t["n_tokens"], "evaluations": len(self.trace)}

    def __repr__(self) -> str:
        return (f"KLMatch({self.disruption.label()!r}, KL {self.target.kl:.4g} vs control x{self.control.control_scale:.4g} "
                f"{self.effect.kl:.4g}, matched={self.matched})")


def kl_match(model: LoadedModel, disruption: Disruption, windows: Tensor | Sequence[Sequence[int]], *,
             control: str = "matched", tol: float = KL_TOL, max_scale: float = 256.0, max_evals: int = 16,
             batch_size: int = 8) -> KLMatch:
    """The ``control`` of ``disruption`` whose KL on ``windows`` is within ``tol`` of the disruption's.

    Starts at scale 1, doubles (or halves) until the target's KL is bracketed or ``max_scale``
    (``1 / max_scale``) is reached, then bisects on a log scale; at most ``max_evals`` control
    evaluations, scales 1% apart at the finest. Returns the closest scale tried (``matched`` says
    whether it is within ``tol``).

    Raises:
        DisruptionError: ``disruption`` is itself a control, ``control`` is not variance-matched or
            ``"random"``, or the windows are not one length.

    >>> import massmech as mm
    >>> model = mm.load_model("tiny-llama")
    >>> windows = torch.randint(3, 200, (4, 12), generator=torch.Generator().manual_seed(0))
    >>> m = kl_match(model, Disruption(rule="topk", k=1), windows)
    >>> m.matched, abs(m.effect.kl - m.target.kl) <= 0.1 * m.target.kl
    (True, True)
    """
    if disruption.control is not None:
        raise DisruptionError(f"kl_match matches a control to a disruption; {disruption.label()} is a control already")
    if control not in (*MATCHED_CONTROLS, "random"):
        raise DisruptionError(f"kl_match scales a variance-matched ({', '.join(MATCHED_CONTROLS)}) or the 'random' "
                              f"control, got {control!r}")
    if not isinstance(windows, Tensor):
        if len({len(w) for w in windows}) != 1:
            raise DisruptionError("kl_match needs windows of one length (no padding)")
        windows = torch.tensor([list(w) for w in windows])
    clean = _clean_logprobs(model, windows, batch_size)
    target = neutral_effect(model, disruption, windows, batch_size=batch_size, clean=clean)
    tried: dict[float, NeutralEffect] = {}

    def at(scale: float) -> float:
        if scale not in tried:
            tried[scale] = neutral_effect(model, disruption.as_control(control, scale), windows, batch_size=batch_size,
                                          clean=clean)
        return tried[scale].kl

    def close(kl: float) -> bool:
        return abs(kl - target.kl) <= tol * target.kl

    step = 2.0 if at(1.0) < target.kl else 0.5  # toward the target's KL
    scale, bracket = 1.0, None
    while not close(tried[scale].kl) and len(tried) < max_evals and 1 / max_scale <= scale * step <= max_scale:
        if (at(scale * step) >= target.kl) == (step > 1):  # crossed it: bisect between the two
            bracket = sorted((scale, scale * step))
            break
        scale *= step
    # bisect to 1% in scale (a random control's count is whole: its KL moves in steps)
    while bracket and bracket[1] > 1.01 * bracket[0] and not any(close(e.kl) for e in tried.values()) \
            and len(tried) < max_evals:
        mid = math.sqrt(bracket[0] * bracket[1])
        bracket = [mid, bracket[1]] if at(mid) < target.kl else [bracket[0], mid]
    best = min(tried, key=lambda s: (abs(tried[s].kl - target.kl), s))
    return KLMatch(disruption, disruption.as_control(control, best), target, tried[best], close(tried[best].kl), tol,
                   tuple((s, e.kl) for s, e in tried.items()))


#: The neutral text of an effect-matched control: BBC news windows (the calibration split's).
KL_WINDOWS, KL_WINDOW_LEN = 16, 128


def neutral_kl_match(model: LoadedModel, disruption: Disruption, *, control: str = "matched", seed: int = 0) -> KLMatch:
    """:func:`kl_match` on the neutral text every massmech run uses: :data:`KL_WINDOWS` BBC news
    windows of :data:`KL_WINDOW_LEN` tokens (:func:`massmech.core.corpus.calibration_split`, not the task).

    >>> import massmech as mm
    >>> m = neutral_kl_match(mm.load_model("tiny-llama"), Disruption(rule="topk", k=1))
    >>> m.control.control, m.matched
    ('matched', True)
    """
    from massmech.core.corpus import calibration_split

    windows, _ = calibration_split(model, calib_tokens=KL_WINDOWS * KL_WINDOW_LEN, seq_len=KL_WINDOW_LEN, seed=seed)
    return kl_match(model, disruption, windows, control=control)


#: What a KL-matched control depends on besides its disruption and model (part of a sweep cell's key).
NEUTRAL_KL = {"corpus": "bbc_news", "split": "calibration_split", "windows": KL_WINDOWS, "window_len": KL_WINDOW_LEN,
              "tol": KL_TOL, "control": "matched"}

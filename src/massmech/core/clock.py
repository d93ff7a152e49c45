"""Seconds spent inside forward passes, counted per process (issue 28's overhead ratio).

Every model massmech loads or wraps has its Hugging Face root module timed: a forward pre-hook
notes the start, a forward hook that runs even when the pass is cut short (``forward_until``
stops a pass by raising) adds the elapsed seconds, the pass and its tokens to :data:`FORWARDS`.
A study's wall time divided by the seconds it spent in forward passes is its overhead ratio:
what loading, tokenizing, scoring, searching and writing cost on top of the model's compute.
The hooks the pass runs (captures, disruptions) are inside the forward, so this ratio is a lower
bound of the ratio to *bare* passes. On CUDA the clock synchronizes before it reads the time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any


@dataclass
class ForwardClock:
    """Running totals of the forward passes of every timed model in this process.

    >>> clock = ForwardClock()
    >>> clock.add(0.5, tokens=64); clock.add(0.25, tokens=8)
    >>> clock
    ForwardClock(seconds=0.75, passes=2, tokens=72)
    >>> clock.since(ForwardClock(seconds=0.5, passes=1, tokens=64))
    ForwardClock(seconds=0.25, passes=1, tokens=8)
    """

    seconds: float = 0.0
    passes: int = 0
    tokens: int = 0

    def add(self, seconds: float, *, tokens: int) -> None:
        """Count one pass of ``tokens`` tokens (batch x positions) that took ``seconds``."""
        self.seconds += seconds
        self.passes += 1
        self.tokens += tokens

    def snapshot(self) -> ForwardClock:
        """A copy of the totals now (to subtract later with :meth:`since`).

        >>> clock = ForwardClock(seconds=1.0, passes=2, tokens=10)
        >>> copy = clock.snapshot(); clock.add(0.5, tokens=4)
        >>> copy, clock.since(copy)
        (ForwardClock(seconds=1.0, passes=2, tokens=10), ForwardClock(seconds=0.5, passes=1, tokens=4))
        """
        return replace(self)

    def since(self, start: ForwardClock) -> ForwardClock:
        """The passes counted after ``start`` was taken."""
        return ForwardClock(self.seconds - start.seconds, self.passes - start.passes, self.tokens - start.tokens)


#: The process's clock: every model :func:`time_forwards` was given adds to it.
FORWARDS = ForwardClock()


def _tokens(args: tuple, kwargs: dict) -> int:
    x = args[0] if args and hasattr(args[0], "shape") else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    shape = getattr(x, "shape", ())
    return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0


def time_forwards(module: Any) -> None:
    """Time every forward pass of ``module`` into :data:`FORWARDS` (idempotent).

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> time_forwards(lin); time_forwards(lin)  # hooks installed once
    >>> before = FORWARDS.snapshot()
    >>> _ = lin(torch.zeros(3, 5, 2))
    >>> (FORWARDS.since(before).passes, FORWARDS.since(before).tokens)
    (1, 15)
    """
    if getattr(module, "_massmech_clock", False):
        return
    import torch

    started: list[tuple[float, int]] = []

    def _sync() -> None:
        param = next(module.parameters(), None)
        if param is not None and param.device.type == "cuda":
            torch.cuda.synchronize(param.device)

    def pre(mod: Any, args: tuple, kwargs: dict) -> None:
        _sync()
        started.append((time.perf_counter(), _tokens(args, kwargs)))

    def post(mod: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if started:
            _sync()
            start, tokens = started.pop()
            FORWARDS.add(time.perf_counter() - start, tokens=tokens)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True, always_call=True)
    module._massmech_clock = True

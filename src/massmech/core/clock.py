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

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


@dataclass
class ForwardClock:
    """Running totals of the forward passes of every timed model in this process.

    ``hook_seconds`` is the part of ``seconds`` spent in the hooks massmech ran inside the passes
    (captures, disruptions: see :func:`timed_hook`); ``seconds - hook_seconds`` is the bare passes.

    >>> clock = ForwardClock()
    >>> clock.add(0.5, tokens=64); clock.add(0.25, tokens=8); clock.add_hook(0.1)
    >>> clock
    ForwardClock(seconds=0.75, passes=2, tokens=72, hook_seconds=0.1)
    >>> clock.since(ForwardClock(seconds=0.5, passes=1, tokens=64))
    ForwardClock(seconds=0.25, passes=1, tokens=8, hook_seconds=0.1)
    """

    seconds: float = 0.0
    passes: int = 0
    tokens: int = 0
    hook_seconds: float = 0.0

    def add(self, seconds: float, *, tokens: int) -> None:
        """Count one pass of ``tokens`` tokens (batch x positions) that took ``seconds``."""
        self.seconds += seconds
        self.passes += 1
        self.tokens += tokens

    def add_hook(self, seconds: float) -> None:
        """Count ``seconds`` spent in a massmech hook inside a pass."""
        self.hook_seconds += seconds

    def snapshot(self) -> ForwardClock:
        """A copy of the totals now (to subtract later with :meth:`since`).

        >>> clock = ForwardClock(seconds=1.0, passes=2, tokens=10)
        >>> copy = clock.snapshot(); clock.add(0.5, tokens=4)
        >>> copy, clock.since(copy)
        (ForwardClock(seconds=1.0, passes=2, tokens=10, hook_seconds=0.0), ForwardClock(seconds=0.5, passes=1, tokens=4, hook_seconds=0.0))
        """
        return replace(self)

    def since(self, start: ForwardClock) -> ForwardClock:
        """The passes counted after ``start`` was taken."""
        return ForwardClock(self.seconds - start.seconds, self.passes - start.passes, self.tokens - start.tokens,
                            self.hook_seconds - start.hook_seconds)


#: The process's clock: every model :func:`time_forwards` was given adds to it.
FORWARDS = ForwardClock()


def _tokens(args: tuple, kwargs: dict) -> int:
    x = args[0] if args and hasattr(args[0], "shape") else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
    shape = getattr(x, "shape", ())
    return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0


#: The timed passes now running, outermost first: a pass inside another (the root's base model
#: called by the root) is part of the outer one and is not counted again.
_RUNNING: list[tuple[float, int]] = []


def time_forwards(module: Any) -> None:
    """Time every forward pass of ``module`` into :data:`FORWARDS` (idempotent).

    Its ``base_model`` (the stack without the LM head), when it has one, is timed too: massmech's
    position-gathering logits call it directly. A pass of one inside a pass of the other counts once.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> time_forwards(lin); time_forwards(lin)  # hooks installed once
    >>> before = FORWARDS.snapshot()
    >>> _ = lin(torch.zeros(3, 5, 2))
    >>> (FORWARDS.since(before).passes, FORWARDS.since(before).tokens)
    (1, 15)
    """
    base = getattr(module, "base_model", None)
    for m in (module, base) if base is not None and base is not module else (module,):
        _time(m)


def _time(module: Any) -> None:
    if getattr(module, "_massmech_clock", False):
        return
    import torch

    def _sync() -> None:
        param = next(module.parameters(), None)
        if param is not None and param.device.type == "cuda":
            torch.cuda.synchronize(param.device)

    def pre(mod: Any, args: tuple, kwargs: dict) -> None:
        if not _RUNNING:
            _sync()
        _RUNNING.append((time.perf_counter(), _tokens(args, kwargs)))

    def post(mod: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if not _RUNNING:
            return
        start, tokens = _RUNNING.pop()
        if not _RUNNING:  # the outermost pass ended
            _sync()
            FORWARDS.add(time.perf_counter() - start, tokens=tokens)

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, with_kwargs=True, always_call=True)
    module._massmech_clock = True


def timed_hook(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a TransformerLens hook) with its seconds added to :data:`FORWARDS`'s ``hook_seconds``.

    On CUDA this is the host's time in the hook (kernels it launches may finish later).

    >>> before = FORWARDS.snapshot()
    >>> timed_hook(lambda x, hook: x + 1)(1, hook=None), FORWARDS.since(before).hook_seconds > 0
    (2, True)
    """

    @functools.wraps(fn)
    def hook(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            FORWARDS.add_hook(time.perf_counter() - start)

    return hook

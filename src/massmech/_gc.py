"""Python's cyclic garbage collector held off while a load builds millions of small objects.

A model load parses a large ``tokenizer.json`` and imports torch, transformers and TransformerLens:
millions of objects that live on, none of them garbage. Each full collection on the way walks
all of them again; on Gemma-3-270M that was 1.9 s of a 6.7 s first load (``bench/load_time.py``).
Held off, the collector runs once when the load ends and frees the same cycles then.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off automatic garbage collection inside the block (nested blocks are fine).

    The collector's state is put back as it was found: if it was off already, it stays off.

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()

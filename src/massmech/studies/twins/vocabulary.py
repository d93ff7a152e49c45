"""The twins' names, torch-free (the config and the CLI's ``--help`` read them without loading torch).

The position mechanisms a twin may have are :data:`massmech.core.positions.MECHANISMS`.

>>> KINDS
('repeat', 'kv', 'passkey')
"""

from __future__ import annotations

from collections.abc import Sequence

from massmech.errors import CorpusError

KINDS = ("repeat", "kv", "passkey")  # the in-context tasks of the training mix


def check_kinds(kinds: Sequence[str]) -> None:
    """Raise a :class:`CorpusError` naming :data:`KINDS` if any of ``kinds`` is not one of them."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise CorpusError(f"unknown in-context kinds {unknown}; choose from {KINDS}")

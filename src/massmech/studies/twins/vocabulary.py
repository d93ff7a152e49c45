"""The twins' names, torch-free (the config and the CLI's ``--help`` read them without loading torch).

>>> check_mechanism("rope"), KINDS
('rope', ('repeat', 'kv', 'passkey'))
"""

from __future__ import annotations

from collections.abc import Sequence

from massmech.errors import CorpusError, TwinError

MECHANISMS = ("rope", "absolute", "nope")  # how a twin encodes position
KINDS = ("repeat", "kv", "passkey")  # the in-context tasks of the training mix


def check_mechanism(mechanism: str) -> str:
    """``mechanism`` if it is one of :data:`MECHANISMS` (else a :class:`TwinError` naming them)."""
    if mechanism not in MECHANISMS:
        raise TwinError(f"unknown position mechanism {mechanism!r}; choose from {MECHANISMS}")
    return mechanism


def check_kinds(kinds: Sequence[str]) -> None:
    """Raise a :class:`CorpusError` naming :data:`KINDS` if any of ``kinds`` is not one of them."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise CorpusError(f"unknown in-context kinds {unknown}; choose from {KINDS}")

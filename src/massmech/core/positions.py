"""How a model encodes position: the names, torch-free (configs and ``--help`` read them).

>>> check_mechanism("rope"), MECHANISMS
('rope', ('rope', 'absolute', 'nope'))
"""

from __future__ import annotations

from massmech.errors import TwinError

MECHANISMS = ("rope", "absolute", "nope")  # rotary; learned absolute embeddings; none but the causal mask


def check_mechanism(mechanism: str) -> str:
    """``mechanism`` if it is one of :data:`MECHANISMS` (else a :class:`TwinError` naming them).

    >>> check_mechanism("nope")
    'nope'
    """
    if mechanism not in MECHANISMS:
        raise TwinError(f"unknown position mechanism {mechanism!r}; choose from {MECHANISMS}")
    return mechanism

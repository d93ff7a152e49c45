"""Runtime checker used by the test suite: beartype, with ints accepted where floats are annotated."""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))

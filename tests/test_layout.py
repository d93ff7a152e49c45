"""The package's shape is part of its contract: layers, module size, one home per primitive."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import massmech

SRC = Path(massmech.__file__).parent
MODULES = sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)
# Imports point left only, with no exception: the ground floor (errors, _notebook) imports nothing
# of massmech, and the package's front door (__init__, __main__) may name anything.
LAYERS = ["files", "stats", "core", "diagnostics", "causal", "plotting", "infra", "studies", "report", "cli"]
GROUND = {"errors", "_notebook"}
FRONT = {"__init__", "__main__"}


def _layer(path: Path) -> str | None:
    """The layer of a module (``None`` for the front door)."""
    first = path.relative_to(SRC).parts[0]
    name = first.removesuffix(".py")
    return None if name in FRONT else ("ground" if name in GROUND else name)


def _imported(tree: ast.AST) -> list[str]:
    """Every massmech module a file imports, at any depth (function-level imports included)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("massmech"):
            names += [node.module] if node.module != "massmech" else [f"massmech.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("massmech")]
    return names


def _rank(layer: str) -> int:
    return -1 if layer == "ground" else LAYERS.index(layer)


def test_every_module_has_a_layer():
    unknown = sorted({str(p.relative_to(SRC)) for p in MODULES if (lay := _layer(p)) and lay != "ground" and lay not in LAYERS})
    assert not unknown, f"modules in no layer of {LAYERS}: {unknown}"


def test_imports_point_down_the_layers():
    bad = []
    for p in MODULES:
        mine = _layer(p)
        if mine is None:
            continue
        for module in _imported(ast.parse(p.read_text())):
            first = module.split(".")[1] if "." in module else ""
            theirs = "ground" if first in GROUND else first
            if theirs in LAYERS + ["ground"] and _rank(theirs) > _rank(mine):
                bad.append(f"{p.relative_to(SRC)} ({mine}) imports {module} ({theirs})")
    assert not bad, "\n".join(bad)


def test_the_layer_check_sees_a_function_level_import():
    tree = ast.parse("def f():\n    from massmech.cli import main\n    import massmech.report.ledger\n")
    assert _imported(tree) == ["massmech.cli", "massmech.report.ledger"]


def test_transformer_lens_internals_live_in_one_module():
    touching = sorted(
        str(p.relative_to(SRC)) for p in MODULES
        if re.search(r"original_model\b|_original_component|transformer_lens", p.read_text())
        and p.name != "bridge.py"
    )
    # models.py may *name* the bridge in prose; code access is checked by the pattern below
    code = [m for m in touching if re.search(r"\.original_model\b|\"_original_component\"|import transformer_lens|from transformer_lens",
                                             (SRC / m).read_text())]
    assert not code, f"TransformerLens internals outside core/bridge.py: {code}"


# Outside core, what may hold the Hugging Face model itself: the weight quantizers (they rewrite HF
# decoder weights by their module names, as llmcompressor does) and doctor (its reference is plain
# HF). Everything else goes through LoadedModel (logits, final_logits, hooks, generate, ...).
HF_HOLDERS = {"diagnostics/doctor.py", "studies/quant/smoothing.py", "studies/quant/study.py",
              "studies/quant/methods.py", "studies/quant/variants.py"}
HF_CODE = re.compile(r"\bhf_model\(|\.base_model\b|get_output_embeddings|get_input_embeddings|"
                     r"[\"']ln_final\.hook_in[\"']|[\"']blocks\.\{?|return_type=")


def _code_lines(text: str) -> str:
    """The module without docstring examples and comments (they may name hooks)."""
    return "\n".join(line for line in text.splitlines()
                     if not line.lstrip().startswith((">>>", "...", "#", "[", "'", '"')))


def test_only_core_reaches_into_hugging_face_or_names_a_hook():
    reaching = sorted(str(p.relative_to(SRC)) for p in MODULES
                      if "core" not in p.relative_to(SRC).parts[:1] and HF_CODE.search(_code_lines(p.read_text())))
    assert set(reaching) <= HF_HOLDERS, f"Hugging Face or hook internals outside core: {sorted(set(reaching) - HF_HOLDERS)}"
    assert HF_CODE.search('hf = hf_model(model)') and HF_CODE.search('name = "blocks.0.attn.hook_k"')  # it can see


def test_the_massive_rule_has_one_home():
    pattern = re.compile(r">\s*\w*\.?lam\s*\*|\.topk\(")
    homes = sorted(str(p.relative_to(SRC)) for p in MODULES if pattern.search(p.read_text()))
    assert homes == ["core/detect.py"], homes


def test_import_is_lazy():
    code = "import sys, massmech; print(sorted(m for m in ('torch', 'transformers', 'transformer_lens', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import massmech pulled in {out}"
    # every study's config (its CLI flags and --help) without torch
    configs = ("import sys; from massmech.studies.registry import studies; "
               "[s.config_class() for s in studies().values()]; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", configs], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"a study config pulled in {out}"
    help_mods = "import sys; from massmech.cli import main; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", help_mods], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_public_names_resolve_and_old_paths_are_gone():
    for name in massmech.__all__:
        assert getattr(massmech, name) is not None, name
    from massmech import plotting

    assert plotting.spectrum is massmech.plotting.spectrum
    for old in ("massmech.models", "massmech.sweeps", "massmech._compat", "massmech.studies.presets"):
        try:
            importlib.import_module(old)
        except ModuleNotFoundError:
            continue
        raise AssertionError(f"{old} still imports (the forwarded old paths were dropped in 0.6)")


def test_every_error_has_the_one_base_and_keeps_its_builtin():
    from massmech import errors

    for name, cls in vars(errors).items():
        if isinstance(cls, type) and issubclass(cls, Exception) and cls is not errors.MassmechError:
            assert issubclass(cls, errors.MassmechError), name
            assert len(cls.__mro__) > 3, f"{name} has no builtin base besides Exception"


def test_every_test_a_docstring_or_page_cites_exists():
    """A docstring or page that says "see tests/x.py" must point at a file that is there."""
    root = SRC.parents[1]
    cited = {}
    for path in [*MODULES, *(root / "docs").rglob("*.md"), root / "README.md"]:
        for ref in re.findall(r"tests/[A-Za-z0-9_/]+\.py", path.read_text()):
            cited.setdefault(ref, str(path.relative_to(root)))
    missing = {ref: where for ref, where in cited.items() if not (root / ref).is_file()}
    assert cited and not missing, f"cited tests that do not exist: {missing}"

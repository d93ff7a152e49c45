"""Which ledger verdicts changed between a committed ledger page and the runs now on disk.

Issue 26 asks, after the reruns, which verdicts changed and why. The "why" is a reader's work; the
"which" is this script: it reads the verdicts of ``docs/ledger.md`` as committed at ``--ref`` (the
page generated from the earlier runs) and the ledger of ``--runs`` under every rule version
(:func:`massmech.report.ledger`), and prints one row per (claim, model) with the old verdict, the
new verdict under the version the old page used, and under the newest version. Rows whose run is
not finished yet say ``not run``; rows new since ``--ref`` have no old verdict.

The old page names no rule version where it predates versioned rules; such verdicts were judged
by version 1 (the only one then). Nothing is written unless ``--out`` is given (a CSV, refused if
it exists).

Usage: python analyses/verdict_changes.py [--ref 321b3af] [--runs runs] [--out changes.csv]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

PAGE = "docs/ledger.md"


def old_verdicts(ref: str, page: str = PAGE, repo: str | Path = ".") -> pd.DataFrame:
    """``key, model, old, old_version`` from the ledger page committed at ``ref`` in the git ``repo``."""
    try:
        text = subprocess.run(["git", "show", f"{ref}:{page}"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(f"verdict_changes: cannot read {page} at {ref!r}: {err.stderr.strip()}") from None
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("| "):
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == "#":
            header = cells
            continue
        if header is None or set(cells[0]) <= {"-", ":"} or "verdict" not in header:
            continue
        cell = cells[header.index("verdict")]
        m = re.fullmatch(r"\*\*(.+?)\*\*(?: \(v(\d+)\))?", cell)
        if m:
            rows.append({"key": cells[0], "model": cells[header.index("model")], "old": m.group(1),
                         "old_version": int(m.group(2) or 1)})
    if not rows:
        raise SystemExit(f"verdict_changes: no verdict rows in {page} at {ref!r}")
    return pd.DataFrame(rows)


def changes(ref: str, runs: str | Path, repo: str | Path = ".") -> pd.DataFrame:
    """One row per (claim, model): the old verdict, the new one under the old page's version and under the newest."""
    from massmech.report.ledger import ledger

    new = ledger(runs, versions="all")
    new = new[new["model"] != "-"]
    newest = new.groupby(["key", "model"], sort=False)["version"].transform("max") == new["version"]
    out = new[newest][["key", "model", "version", "verdict"]].rename(columns={"version": "newest_version",
                                                                             "verdict": "newest"})
    old = old_verdicts(ref, repo=repo)
    out = out.merge(old, on=["key", "model"], how="outer")
    same = new.rename(columns={"version": "old_version", "verdict": "new_same_version"})
    out = out.merge(same[["key", "model", "old_version", "new_same_version"]], on=["key", "model", "old_version"],
                    how="left")
    finished = ~out["newest"].isin(["not run", "needs files"]) & out["newest"].notna()
    out["changed"] = finished & out["old"].notna() & (out["old"] != out["new_same_version"])
    out = out.astype({"old_version": "Int64", "newest_version": "Int64"})
    return out[["key", "model", "old", "old_version", "new_same_version", "newest_version", "newest", "changed"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="321b3af", help="the commit whose docs/ledger.md holds the old verdicts")
    ap.add_argument("--runs", default="runs", help="the runs root of the new verdicts")
    ap.add_argument("--out", type=Path, help="also write the table here as CSV (refused if it exists)")
    args = ap.parse_args()
    if args.out is not None and args.out.exists():
        sys.exit(f"verdict_changes: {args.out} exists; give a new path")
    table = changes(args.ref, args.runs)
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.max_colwidth", 30):
        print(table.astype(object).where(table.notna(), "-").to_string(index=False))
    print(f"{int(table['changed'].sum())} verdicts changed under the same rule version; "
          f"{int(table['newest'].isin(['not run', 'needs files']).sum())} rows not run yet (or needing files)", flush=True)
    if args.out is not None:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()

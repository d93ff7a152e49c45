"""The environment is pinned: constraints.txt holds what `make setup` installs, and runs record it."""

from __future__ import annotations

import re
from pathlib import Path

from massmech.files.provenance import environment, manifest

ROOT = Path(__file__).resolve().parents[1]


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _drift(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    norm = {re.sub(r"[-_.]+", "-", k): v for k, v in installed.items()}
    return [f"{n}: installed {norm.get(n)}, locked {v}" for n, v in pins.items() if norm.get(n) != v]


def test_every_installed_version_is_the_locked_one():
    pins = _pins((ROOT / "constraints.txt").read_text())
    assert {"torch", "transformers", "transformer-lens", "llmcompressor", "numpy"} <= set(pins)
    assert pins["torch"].endswith("+cpu"), "the lock must name the CPU torch wheel"
    drift = _drift(pins, environment())
    assert not drift, "the environment drifted from constraints.txt (make setup, or make lock after an upgrade):\n" + "\n".join(drift)
    missing = sorted(set(environment()) - set(pins) - {"massmech", "wheel"})
    assert not missing, f"installed but not locked: {missing} (make lock)"


def test_the_drift_check_can_fail():
    assert _drift({"torch": "0.0.1"}, {"torch": "2.13.0+cpu"}) == ["torch: installed 2.13.0+cpu, locked 0.0.1"]


def test_a_manifest_records_every_installed_version():
    m = manifest({"x": 1})
    assert m["environment"] == environment() and len(m["environment"]) > 50

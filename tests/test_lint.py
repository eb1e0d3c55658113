"""The linter configuration of pyproject.toml ([tool.ruff]) holds for the package, the recipes, the tests and the
CLI entry point: ruff reports nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "hfgen", "recipes", "tests",
                             "hfgen_cli.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

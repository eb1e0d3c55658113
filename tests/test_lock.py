"""requirements/lock.py: the drift report names every package whose installed version differs from the lock, and
``write`` produces a lock that pip reads as constraints and that reports no drift against the environment it came
from."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

LOCK_SCRIPT = Path(__file__).resolve().parents[1] / "requirements" / "lock.py"


def _lock(*args: str) -> str:
    result = subprocess.run([sys.executable, str(LOCK_SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def test_write_then_drift_is_empty_and_every_change_is_named(tmp_path):
    lock = tmp_path / "lock.txt"
    _lock("write", "--lock", str(lock))
    pins = dict(line.split("==") for line in lock.read_text().splitlines() if line and not line.startswith("#"))
    assert pins["peft"] == version("peft") and pins["torch"] == version("torch").split("+")[0]
    assert "hfgen" not in pins
    assert "0 of %d locked packages differ" % len(pins) in _lock("drift", "--no-index", "--lock", str(lock))

    # an older peft in the lock, a package missing from it, one locked but not installed
    edited = lock.read_text().replace(f"peft=={pins['peft']}", "peft==0.0.1").replace(f"trl=={pins['trl']}\n", "")
    lock.write_text(edited + "not-a-real-package==1.0\n")
    report = _lock("drift", "--no-index", "--lock", str(lock))
    assert "3 of %d locked packages differ" % len(pins) in report
    lines = {line.split()[0]: line for line in report.splitlines()[1:] if line.startswith("  ")}
    assert "lock 0.0.1" in lines["peft"] and f"installed {pins['peft']}" in lines["peft"]
    assert "lock -" in lines["trl"] and "lock 1.0" in lines["not-a-real-package"]

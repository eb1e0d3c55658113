#!/usr/bin/env python
"""The project's lock of exact versions (``requirements/lock.txt``): write it from an environment, or report how an
environment differs from it.

    python requirements/lock.py drift [--lock requirements/lock.txt]   # this interpreter's packages vs the lock
    python requirements/lock.py write [--lock requirements/lock.txt]   # rewrite the lock from this interpreter

``make test-latest`` builds ``.venv-latest`` with the newest versions ``pyproject.toml`` allows, prints ``drift``
and runs the suite there; ``make lock`` (after a green ``make test-latest``) writes the lock from that environment.
``drift`` also names newer releases on the package index that the ranges in ``pyproject.toml`` exclude, so an
upper bound is widened on purpose rather than forgotten.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import re
import subprocess
import sys
from importlib.metadata import distributions, requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

logger = logging.getLogger("lock")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCK = ROOT / "requirements" / "lock.txt"
# Installed from a wheel on the machines' disk; any other release is a multi-GB CUDA build (see the Makefile).
HELD = {"torch": "the CPU wheel on these machines' disk; a newer release is a multi-GB CUDA build"}
SELF = {"hfgen", "pip", "setuptools", "wheel"}


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of this interpreter's packages, without hfgen and the packaging tools; local
    version labels (``2.13.0+cpu``) dropped so the lock works as a pip constraints file."""
    versions = {}
    for dist in distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in SELF:
            versions[name] = dist.version.split("+")[0]
    return versions


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonicalize_name(name)] = pinned.strip()
    return pins


def write(path: Path) -> None:
    versions = installed()
    header = (f"# Exact versions `make install` / `make test` install (pip constraints). Written by `python "
              f"requirements/lock.py write`\n# on {datetime.date.today()} from an environment where `make test` "
              f"passed (Python {platform.python_version()}, {platform.machine()}).\n# Refresh: `make test-latest` "
              f"(read its drift report), then `make lock`.\n")
    path.write_text(header + "".join(f"{name}=={versions[name]}\n" for name in sorted(versions)))
    logger.info("wrote %d pins to %s", len(versions), path)


def direct_requirements() -> list[Requirement]:
    """hfgen's own requirements, extras included, as installed (from ``pyproject.toml``)."""
    return [Requirement(req) for req in requires("hfgen") or []]


def newest_release(name: str) -> Version | None:
    """The newest final release on the package index (``pip index versions``); ``None`` when it cannot be asked."""
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True,
                                text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\((\S+)\)", result.stdout)
    try:
        return Version(match.group(1)) if match else None
    except InvalidVersion:
        return None


def drift(path: Path, ask_index: bool = True) -> int:
    """Log every package whose installed version differs from the lock, and (with ``ask_index``) every direct
    dependency whose newest release its range excludes; returns the number of packages that differ."""
    pins, versions = read_lock(path), installed()
    changed = {name: (pins.get(name), versions.get(name)) for name in sorted(set(pins) | set(versions))
               if pins.get(name) != versions.get(name)}
    logger.info("drift against %s: %d of %d locked packages differ", path.name, len(changed), len(pins))
    for name, (locked, now) in changed.items():
        note = f"  (held: {HELD[name]})" if name in HELD else ""
        logger.info("  %-28s lock %-12s installed %s%s", name, locked or "-", now or "-", note)
    for requirement in direct_requirements() if ask_index else ():
        newest = newest_release(requirement.name)
        if newest is not None and newest not in requirement.specifier:
            logger.info("  %s %s is released; pyproject.toml allows %s: widen it after testing", requirement.name,
                        newest, requirement.specifier)
    return len(changed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["drift", "write"], help="report drift, or rewrite the lock")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK, help="the lock file")
    parser.add_argument("--no-index", action="store_true",
                        help="drift: compare with the lock only, without asking the package index for newer releases")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "write":
        write(args.lock)
    else:
        drift(args.lock, ask_index=not args.no_index)


if __name__ == "__main__":
    main()

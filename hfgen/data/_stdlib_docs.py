"""Collect the standard library's docstrings, one document per module.

Run as a script by `hfgen.data.corpus` in a child interpreter started with `-I -S`: importing a hundred-odd
modules has side effects (signal handlers, readline hooks, logging and warning state, `sys.modules` growth)
that must not leak into the caller, and `-S` keeps third-party packages from being imported at all. The
script depends on nothing but the standard library and prints a JSON object `{module name: text}` on stdout.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import sys
import warnings
from types import ModuleType

# Modules whose import does something visible (opens a browser, prints, starts a GUI, swaps the interpreter's
# line editor) or that other tools patch (distutils), and package trees of tests and platform-specific code.
_SKIP = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "readline",
        "rlcompleter",
        "distutils",
        "lib2to3",
        "ensurepip",
        "test",
        "tests",
        "idle_test",
        "encodings",  # a hundred generated codec modules with near-identical docstrings
        "pydoc_data",  # the reference manual itself: already the main corpus
    }
)


def _skipped(name: str) -> bool:
    parts = name.split(".")
    return any(part in _SKIP or part.startswith("_") for part in parts)


def _module_names() -> list[str]:
    """Every importable, non-private stdlib module, packages walked one import at a time, sorted."""
    names: list[str] = []
    pending = sorted(n for n in sys.stdlib_module_names if not _skipped(n))
    while pending:
        name = pending.pop(0)
        module = _import(name)
        if module is None:
            continue
        names.append(name)
        if hasattr(module, "__path__"):
            subs = (f"{name}.{info.name}" for info in pkgutil.iter_modules(module.__path__))
            pending = sorted(pending + [s for s in subs if not _skipped(s)])
    return names


def _import(name: str) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - platform modules raise ImportError, some SystemExit or OSError
        return None


def _member_docs(module: ModuleType) -> list[str]:
    """Docstrings of the public classes and functions a module defines (not re-exports), methods included."""
    docs: list[str] = []
    for attr in sorted(vars(module)):
        obj = vars(module)[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        doc = inspect.getdoc(obj)
        if doc:
            docs.append(f"{attr}\n\n{doc}")
        if inspect.isclass(obj):
            for meth_name in sorted(vars(obj)):
                meth = vars(obj)[meth_name]
                # getdoc would fall back to the base class's docstring; only the class's own text is new
                meth_doc = getattr(meth, "__doc__", None) if callable(meth) else None
                if meth_doc and not meth_name.startswith("_") and isinstance(meth_doc, str):
                    docs.append(f"{attr}.{meth_name}\n\n{inspect.cleandoc(meth_doc)}")
    return docs


def collect() -> dict[str, str]:
    """Map each module name to its docstring followed by its members' docstrings; modules with none are left out."""
    out: dict[str, str] = {}
    for name in _module_names():
        module = sys.modules[name]
        parts = [inspect.getdoc(module) or ""] + _member_docs(module)
        text = "\n\n".join(p for p in parts if p).strip()
        if text:
            out[name] = text
    return out


if __name__ == "__main__":
    json.dump(collect(), sys.stdout, ensure_ascii=True, sort_keys=True)

"""Writing model code into a saved folder, the layout diffusers loads with ``trust_remote_code=True`` where hfgen
is not installed (notes/hf-stack.md, "diffusers"): a model's file with every file it reaches through relative
imports inlined into it, ONE self-contained file, and ``auto_map`` in ``config.json`` for ``diffusers.AutoModel``.

One file, not the file and its siblings: ``DiffusionPipeline.from_pretrained("user/repo")`` downloads only
``<component>/<module>.py`` of a custom component (diffusers 0.42, ``DiffusionPipeline.download``'s allow
patterns), then imports it from the downloaded folder, where a sibling it imports (``from .attention import ...``)
is missing. A local folder loaded by path has every file, so it worked either way.

diffusers' ``save_pretrained`` writes weights and config only; :class:`HubExportMixin` adds the code.
"""

from __future__ import annotations

import ast
import inspect
import json
import os


def _binding_key(node: ast.stmt, name: str) -> str:
    """What a top-level statement binds ``name`` to: the imported object for an import (so ``from torch import nn``
    and ``import torch.nn as nn`` agree), else the statement itself."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (alias.asname or alias.name.split(".")[0]) == name:
                return "import " + (alias.name if alias.asname else alias.name.split(".")[0])
    if isinstance(node, ast.ImportFrom) and not node.level:
        for alias in node.names:
            if (alias.asname or alias.name) == name:
                return f"import {node.module}.{alias.name}"
    return ast.dump(node)


def _top_level_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Import):
        return [alias.asname or alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [] if node.level else [alias.asname or alias.name for alias in node.names]
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = []
    for target in targets:
        names += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
    return names


def inline_module(source: str) -> str:
    """The text of ``source`` with every file it reaches through relative imports (``from .x import a``,
    ``from ..pkg.x import a as b``) inlined before it, dependencies first, and those imports dropped (an ``as`` alias
    becomes an assignment), so that the result imports nothing relatively. Two inlined files binding one top-level
    name to different things are an error, not a silent override."""
    order: list[str] = []  # absolute paths, dependencies first
    visiting: set[str] = set()
    texts: dict[str, tuple[str, list[str]]] = {}  # path -> (rewritten code, __future__ features)

    def visit(path: str) -> None:
        path = os.path.abspath(path)
        if path in order:
            return
        if path in visiting:
            raise ValueError(f"Cannot inline {source}: circular relative imports through {path}.")
        visiting.add(path)
        with open(path) as handle:
            text = handle.read()
        lines = text.splitlines()
        replace: dict[int, tuple[int, list[str]]] = {}  # first line (0-based) -> (last line, new lines)
        features: list[str] = []
        for node in ast.walk(ast.parse(text, path)):
            if not isinstance(node, ast.ImportFrom):
                continue
            first, last = node.lineno - 1, node.end_lineno - 1
            indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
            if not lines[first].lstrip().startswith("from") or lines[last].rstrip().endswith(";"):
                raise ValueError(f"{path}:{node.lineno}: put the import on its own line(s) to export it.")
            if node.module == "__future__":
                features += [alias.name for alias in node.names]
                replace[first] = (last, [])
                continue
            if not node.level:
                continue
            base = os.path.dirname(path)
            for _ in range(node.level - 1):
                base = os.path.dirname(base)
            target = os.path.join(base, *(node.module or "").split(".")) + ".py"
            if not node.module or not os.path.isfile(target):
                raise ValueError(f"{path}:{node.lineno}: cannot export '{lines[first].strip()}' (only "
                                 f"'from .module import name' of a module file is supported).")
            visit(target)
            new = [f"{indent}{alias.asname} = {alias.name}" for alias in node.names
                   if alias.asname and alias.asname != alias.name]
            replace[first] = (last, new or ([f"{indent}pass"] if indent else []))
        out, skip_to = [], -1
        for number, line in enumerate(lines):
            if number <= skip_to:
                continue
            if number in replace:
                skip_to, new = replace[number]
                out += new
            else:
                out.append(line)
        visiting.discard(path)
        order.append(path)
        texts[path] = ("\n".join(out).strip("\n"), features)

    visit(source)
    bound: dict[str, tuple[str, str]] = {}  # name -> (binding key, file)
    for path in order:
        for node in ast.parse(texts[path][0], path).body:
            for name in _top_level_names(node):
                key = _binding_key(node, name)
                if name in bound and bound[name][1] != path and bound[name][0] != key:
                    raise ValueError(f"Cannot inline {source}: '{name}' is defined both in {bound[name][1]} and "
                                     f"in {path}.")
                bound.setdefault(name, (key, path))
    features = sorted({feature for path in order for feature in texts[path][1]})
    root = os.path.commonpath([os.path.dirname(p) for p in order])
    parts = [f"# {os.path.basename(source)}: generated by hfgen, self-contained (the files it imports are inlined "
             f"below, dependencies first)."]
    if features:
        parts.append(f"from __future__ import {', '.join(features)}")
    for path in order:
        parts.append(f"# {'-' * 20} {os.path.relpath(path, root)}\n{texts[path][0]}")
    return "\n\n\n".join(parts) + "\n"


def export_module(source: str, folder: str) -> list[str]:
    """Write ``source`` into ``folder`` under its own name as one self-contained file (:func:`inline_module`):
    diffusers fetches only that file of a component from the Hub. Returns the written file names."""
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(source)
    text = inline_module(source)
    with open(os.path.join(folder, name), "w") as handle:
        handle.write(text)
    return [name]


class HubExportMixin:
    """Put first in a ``ModelMixin`` model's bases: ``save_pretrained`` then also writes the model's code and
    ``auto_map = {"AutoModel": "<file>.<Class>"}``, so ``diffusers.AutoModel.from_pretrained(path,
    trust_remote_code=True)`` loads it without hfgen (and a pipeline folder holds the code of its components)."""

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        """``auto_map`` is for the loader, not an ``__init__`` argument: drop it instead of warning about it."""
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        source = inspect.getsourcefile(type(self))
        export_module(source, str(save_directory))
        path = os.path.join(save_directory, "config.json")
        with open(path) as handle:
            config = json.load(handle)
        config["auto_map"] = {"AutoModel": f"{os.path.splitext(os.path.basename(source))[0]}.{type(self).__name__}"}
        with open(path, "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)

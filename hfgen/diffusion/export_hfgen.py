"""Writing model code into a saved folder, the layout diffusers loads with ``trust_remote_code=True`` where hfgen
is not installed (notes/hf-stack.md, "diffusers"): a model's file and every file it reaches through relative
imports, flattened into the folder, and ``auto_map`` in ``config.json`` for ``diffusers.AutoModel``.

diffusers' ``save_pretrained`` writes weights and config only; :class:`HubExportMixin` adds the code.
"""

from __future__ import annotations

import inspect
import json
import os
import re

_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\b.*)$")


def export_module(source: str, folder: str) -> list[str]:
    """Copy ``source`` and every file it reaches through relative imports (``from .x``, ``from ..pkg.x``) flat
    into ``folder``, each import rewritten to ``from .x import``. diffusers copies only a module's *direct*
    relative imports when it loads remote code, so the main file also gets one import line per indirect
    dependency. Returns the written file names."""
    os.makedirs(folder, exist_ok=True)
    written: dict[str, str] = {}

    def visit(path: str) -> str:
        name = os.path.basename(path)
        if name in written:
            if written[name] != os.path.abspath(path):
                raise ValueError(f"Two exported files share the name {name}: {written[name]} and {path}.")
            return name
        written[name] = os.path.abspath(path)
        lines = []
        with open(path) as handle:
            for line in handle.read().splitlines():
                match = _RELATIVE_IMPORT.match(line)
                if match:
                    head, dots, dotted, tail = match.groups()
                    base = os.path.dirname(path)
                    for _ in range(len(dots) - 1):
                        base = os.path.dirname(base)
                    target = os.path.join(base, *dotted.split(".")) + ".py"
                    if not os.path.isfile(target):
                        raise ValueError(f"{path}: cannot export '{line.strip()}' (only 'from .module import name' "
                                         f"of a module file is supported).")
                    line = f"{head}.{os.path.splitext(visit(target))[0]}{tail}"
                lines.append(line)
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return name

    main = visit(source)
    direct = set()
    with open(os.path.join(folder, main)) as handle:
        for line in handle:
            match = _RELATIVE_IMPORT.match(line.rstrip("\n"))
            if match:
                direct.add(match.group(3))
    indirect = sorted(os.path.splitext(n)[0] for n in written if n != main and os.path.splitext(n)[0] not in direct)
    if indirect:
        with open(os.path.join(folder, main), "a") as handle:
            handle.write("\n# diffusers copies only direct relative imports of remote code: the indirect ones too.\n")
            for module in indirect:
                handle.write(f"from .{module} import __name__ as _exported_{module}  # noqa: E402,F401\n")
    return sorted(written)


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

"""``hfgen.diffusion.export_hfgen.inline_module``: a file and every file it reaches through relative imports become
one self-contained file that runs where the package is not importable, and gives the same values."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hfgen.diffusion.export_hfgen import inline_module


def write_package(root, files: dict[str, str]):
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


PACKAGE = {
    "pkg/__init__.py": "",
    "pkg/core/__init__.py": "",
    "pkg/core/base.py": """
        from __future__ import annotations
        import math
        __all__ = ["scale"]
        def scale(x: float) -> float:
            return x * math.pi
        """,
    "pkg/core/mid.py": """
        from __future__ import annotations
        from .base import (
            scale as base_scale,
        )
        __all__ = ["twice"]
        def twice(x):
            return 2 * base_scale(x)
        """,
    "pkg/top/__init__.py": "",
    "pkg/top/model.py": """
        from ..core.mid import twice
        from ..core.base import scale
        def value():
            def inner():
                from ..core.base import scale
            return twice(1.0) + scale(1.0)
        """,
}


def test_inlined_file_runs_alone_with_the_package_values(tmp_path):
    root = write_package(tmp_path / "src", PACKAGE)
    text = inline_module(str(root / "pkg/top/model.py"))
    assert "from ." not in text and text.count("from __future__ import annotations") == 1
    assert text.index("def scale") < text.index("def twice") < text.index("def value")  # dependencies first
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.py").write_text(text)
    script = "import math, model; assert abs(model.value() - 3 * math.pi) < 1e-12; print('ok')"
    result = subprocess.run([sys.executable, "-c", script], cwd=alone, capture_output=True, text=True,
                            env={"PYTHONPATH": str(alone)}, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_one_name_bound_twice_to_different_things_is_refused(tmp_path):
    files = dict(PACKAGE)
    files["pkg/core/mid.py"] = files["pkg/core/mid.py"].rstrip(" ") + "        def scale(x):\n            return x\n"
    root = write_package(tmp_path, files)
    with pytest.raises(ValueError, match="'scale' is defined both in"):
        inline_module(str(root / "pkg/top/model.py"))


def test_circular_and_unsupported_imports_are_refused(tmp_path):
    root = write_package(tmp_path, {"a.py": "from .b import y\nx = 1\n", "b.py": "from .a import x\ny = 2\n",
                                    "c.py": "from . import a\n", "d.py": "import os; from .a import x\n"})
    with pytest.raises(ValueError, match="circular relative imports"):
        inline_module(str(root / "a.py"))
    with pytest.raises(ValueError, match="only 'from .module import name'"):
        inline_module(str(root / "c.py"))
    with pytest.raises(ValueError, match="on its own line"):
        inline_module(str(root / "d.py"))

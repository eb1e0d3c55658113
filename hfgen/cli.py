"""The ``hfgen`` command, importable as ``hfgen.cli``. Its code lives in the top-level module ``hfgen_cli``, which the
console script runs: importing anything inside this package first imports ``hfgen/__init__.py`` (every model, torch
included), and ``hfgen --help`` should answer at once."""

import sys

from hfgen_cli import build_parser, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())

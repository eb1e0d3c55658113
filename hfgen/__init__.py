"""hfgen: the architectures and attention/softmax variants of the generative-AI survey notes as native
Hugging Face models. Importing hfgen registers every model with transformers' Auto classes (their public ``register``) and
changes nothing else in other libraries; see :mod:`hfgen.compat`."""

from . import models
from .models import *  # noqa: F403  (hfgen's public names are those of hfgen.models: one list, in its __init__)

# transformers' public registration API, for hfgen's own classes only: nothing else of any other library changes on
# import (what needs more than a public API lives in hfgen.compat and runs only when called).
models.register_auto_classes()

__version__ = "0.1.0"

__all__ = [*models.__all__, "__version__"]

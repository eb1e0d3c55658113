"""Training on top of the Hugging Face trainers: what they lack, and the cores the recipes and the CLI share.

Submodules are imported on use (``from hfgen.training.pretrain import pretrain``) so that importing this package
stays cheap.
"""

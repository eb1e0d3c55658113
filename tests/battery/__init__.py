"""A common model test battery in the style of transformers' own ``ModelTesterMixin`` / ``GenerationTesterMixin`` /
``ConfigTester`` (which are not shipped in the wheel): ``tester.py`` holds the checks, one module per family runs
them on the family's default config, on each variant, and on transformers' own model of that kind (the control)."""

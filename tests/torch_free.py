"""A snippet that makes torch and timm behave as if they were not installed, for subprocess tests.

Prepend :data:`BLOCK_TORCH` to the code a test runs with ``python -c``: a
deployment machine with ``skflow-ad[deploy]`` only has neither.
"""

BLOCK_TORCH = """
import json, sys


class NotInstalled:
    # import hook: torch and timm behave as if they were not installed

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
try:
    import torch
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("torch should not be importable here")
"""

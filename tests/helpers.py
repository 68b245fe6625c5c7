"""Optional extras (peft, transformers) in tests: skipped where absent, but required under CI."""
import importlib
import os

import pytest


def require(module: str):
    """Import ``module``; skip the test file if it is missing, unless CI is set (then fail loudly)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"optional extra {module!r} is not installed "
                                              "(pip install -r requirements-extras.txt)")

"""Fixtures shared by the tests; plain helpers are in tests/helpers.py."""
import pytest

from tests.helpers import make_noah_task, make_tiny_vit


@pytest.fixture
def tiny_vit():
    return make_tiny_vit()


@pytest.fixture
def noah_root(tmp_path):
    """A data root with one generated task ('eurosat', 10 classes)."""
    root = tmp_path / "vtab-1k"
    make_noah_task(root)
    return root

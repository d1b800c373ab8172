"""Root test configuration: the executed notebooks run behind the ``slow`` marker.

``python -m pytest`` runs the fast suite (``-m "not slow"`` in pyproject's addopts);
``python -m pytest -m slow`` runs the notebooks, subprocess and long statistical tests.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)

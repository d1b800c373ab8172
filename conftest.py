"""Root test configuration: the executed notebooks and the doctests run behind ``slow``.

``python -m pytest -n 2`` runs the fast suite (``-m "not slow"`` in pyproject's
addopts); ``python -m pytest -n 2 -m slow tests notebooks jfm --doctest-modules`` runs
the rest in one go: the notebooks, the doctests, and the subprocess, training and long
statistical tests marked ``@pytest.mark.slow``.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).endswith(".ipynb") or type(item).__name__ == "DoctestItem":
            item.add_marker(pytest.mark.slow)

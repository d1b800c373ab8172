"""Root test configuration: the executed notebooks run behind the ``slow`` marker.

``python -m pytest -n 2`` runs the fast suite (``-m "not slow"`` in pyproject's
addopts); ``python -m pytest -n 2 -m slow`` runs the notebooks and the subprocess,
training and long statistical tests marked ``@pytest.mark.slow``. The doctests run on
their own (``python -m pytest -n 2 --doctest-modules jfm``), without the tests'
configuration (float64, strict promotion), as a user would run the examples.
"""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)

"""The documentation site: the docstring conversion, the notebook pages, a strict build."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hook(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstring_roles_and_maths_become_markdown():
    pytest.importorskip("griffe")
    convert = _hook("griffe_rst").convert
    text = (
        "Uses :func:`jfm.fit`, :attr:`jfm.Solution.xs`, :class:`diffrax.Euler`, :mod:`.loop`"
        " and :math:`x^2`.\n\n    .. math::\n        a = b\n\n    after"
    )
    assert convert(text) == (
        "Uses [`jfm.fit`][jfm.fit], [`jfm.Solution.xs`][jfm.Solution], `diffrax.Euler`, "
        "`.loop` and \\(x^2\\).\n\n\n    \\[\n    a = b\n    \\]\n\n    after"
    )


def test_notebook_pages_hold_every_cell():
    import json

    pytest.importorskip("mkdocs")
    nb_path = ROOT / "notebooks" / "quickstart.ipynb"
    page = _hook("notebooks").notebook_markdown(nb_path)
    cells = json.loads(nb_path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code and all(f"```python\n{''.join(c['source']).rstrip()}\n```" in page for c in code)
    assert "".join(cells[0]["source"]).strip() in page


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict`` (as .ci/run runs it): a broken cross-reference, an
    unparsable docstring section or a missing page fails."""
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    for page in ("index.html", "concepts/training/index.html", "notebooks/quickstart/index.html"):
        assert (tmp_path / page).is_file()
    html = (tmp_path / "concepts" / "training" / "index.html").read_text()
    assert 'id="jfm.fit"' in html and 'id="jfm.NonFiniteError"' in html
    print(f"mkdocs build --strict: {time.perf_counter() - start:.1f} s")

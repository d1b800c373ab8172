"""An mkdocs hook: the notebooks of ``notebooks/`` as pages ``notebooks/<name>.md``.

Each notebook becomes one generated Markdown page: markdown cells as they are, code
cells as Python blocks, and their stored outputs (text, and PNG images inline). The
notebooks are committed without outputs (CI executes them with ``nbmake``); set
``JFM_DOCS_EXECUTE=1`` to execute them with ``nbclient`` while building, so that the
pages show their outputs and figures (minutes on a CPU).
"""

import json
import os
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _execute(nb: dict, path: Path) -> dict:
    import nbclient
    import nbformat

    node = nbformat.reads(json.dumps(nb), as_version=4)
    nbclient.NotebookClient(
        node, timeout=1200, resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return json.loads(nbformat.writes(node))


def _outputs(cell) -> list[str]:
    parts = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            parts.append("```text\n" + _text(out["text"]).rstrip() + "\n```")
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            if "image/png" in data:
                png = _text(data["image/png"]).replace("\n", "")
                parts.append(f'<img alt="output" src="data:image/png;base64,{png}">')
            elif "text/plain" in data:
                parts.append("```text\n" + _text(data["text/plain"]).rstrip() + "\n```")
        elif kind == "error":
            parts.append("```text\n" + "\n".join(out.get("traceback", [])) + "\n```")
    return parts


def notebook_markdown(path: Path, execute: bool = False) -> str:
    """The Markdown page of the notebook at ``path``."""
    nb = json.loads(path.read_text())
    if execute:
        nb = _execute(nb, path)
    parts = [
        f"<!-- generated from notebooks/{path.name} by docs/hooks/notebooks.py -->",
        f"!!! note\n    This page is the notebook `notebooks/{path.name}`; run it with "
        f"`jupyter lab notebooks/{path.name}` (or `pytest --nbmake notebooks/{path.name}`).",
    ]
    for cell in nb["cells"]:
        source = _text(cell.get("source", "")).rstrip()
        if cell["cell_type"] == "markdown":
            parts.append(source)
        elif cell["cell_type"] == "code" and source:
            parts.append("```python\n" + source + "\n```")
            parts += _outputs(cell)
    return "\n\n".join(parts) + "\n"


def on_files(files, config):
    execute = os.environ.get("JFM_DOCS_EXECUTE") == "1"
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        content = notebook_markdown(path, execute=execute)
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=content))
    return files

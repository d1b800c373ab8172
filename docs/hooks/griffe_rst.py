"""A griffe extension: the reStructuredText bits of jfm's docstrings as Markdown.

jfm's docstrings are Google style with a few Sphinx constructs; this turns them into what
mkdocs renders:

- ``:func:`jfm.fit``` (and ``:class:``, ``:meth:``, ``:attr:``, ``:data:``, ``:mod:``,
  ``:exc:``, ``:obj:``) into a cross-reference ``[`jfm.fit`][jfm.fit]`` when the target is
  a ``jfm.`` name (so a broken reference fails ``mkdocs build --strict``; an attribute
  links to its class), and into inline code otherwise (``diffrax.Euler``, modules);
- ``:math:`x``` into inline maths ``\\(x\\)``;
- ``.. math::`` blocks into display maths ``\\[ ... \\]`` (pymdownx.arithmatex).
"""

import re
import textwrap

import griffe

_ROLE = re.compile(r":(func|class|meth|attr|data|mod|exc|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")


def _role(m: re.Match) -> str:
    kind, target = m.group(1), m.group(2).strip()
    if not target.startswith("jfm.") or kind == "mod":  # modules have no page of their own
        return f"`{target}`"
    if kind == "attr":  # attributes are documented in their class's docstring
        return f"[`{target}`][{target.rsplit('.', 1)[0]}]"
    return f"[`{target}`][{target}]"


def _math_blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body, i = [], i + 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            inner = textwrap.dedent("\n".join(body)).strip("\n")
            out += [
                "",
                indent + "\\[",
                *(indent + b for b in inner.splitlines()),
                indent + "\\]",
                "",
            ]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def convert(text: str) -> str:
    """The docstring ``text`` with its reStructuredText roles and maths as Markdown."""
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    return _ROLE.sub(_role, text)


class RstToMarkdown(griffe.Extension):
    """Convert every docstring once the package is loaded."""

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = convert(obj.docstring.value)

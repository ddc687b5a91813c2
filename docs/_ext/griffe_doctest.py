"""Griffe extension for the documentation site: renders gpugrad's reStructuredText-flavoured
docstrings as Markdown.

The docstrings are written for ``help()`` and pytest's ``--doctest-modules``: examples are
doctest blocks (``>>>`` lines), cross-references use Sphinx roles (``:func:`name```) and
literal blocks follow a ``::`` line. In Markdown a ``>>>`` line would be a triple block
quote, so each doctest block becomes a fenced ``pycon`` code block, each role becomes
inline code and ``::`` becomes ``:`` (the indented block after it is a Markdown code block).
Doctest directives (``# doctest: +SKIP``) are dropped from the examples.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_DIRECTIVE = re.compile(r"\s*# doctest:.*$")  # pytest's flags, not for readers


def markdown_docstring(text: str) -> str:
    """The docstring ``text`` (already dedented) with doctest blocks fenced, Sphinx roles
    as inline code and ``::`` literal-block markers as ``:``."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                text = lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i]
                block.append(_DIRECTIVE.sub("", text))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [indent + "```pycon", *(indent + b for b in block), indent + "```"]
            continue
        line = _ROLE.sub(r"``\1``", line)
        if line.rstrip().endswith("::") and not line.strip() == "::":
            line = line.rstrip()[:-1]
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestToMarkdown(griffe.Extension):
    """Rewrites every docstring once it is loaded (by static analysis or inspection)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)

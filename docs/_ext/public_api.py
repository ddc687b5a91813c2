"""What the API reference must cover: the public functions and classes of the namespaces
users reach (``gg``, ``gg.nn``, ...), and where docs/reference/*.md renders each one.

Shared by the MkDocs hook (``hooks.py``: a generated page lists every public name that
no reference page places yet, so a new function is documented from the day it lands)
and by tests/test_docs.py (every public name has a docstring and a place in the site).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types
from pathlib import Path

# namespace as users write it -> module
NAMESPACES = {
    "gg": "gpugrad",
    "gg.nn": "gpugrad.nn",
    "gg.optim": "gpugrad.optim",
    "gg.autograd": "gpugrad.autograd",
    "gg.random": "gpugrad.random",
    "gg.memory": "gpugrad.memory",
    "gg.kernels": "gpugrad.backend.kernels",
    "gg.testing": "gpugrad.testing",
    "gg.debug": "gpugrad.debug",
}

REFERENCE = Path(__file__).resolve().parents[1] / "reference"
GENERATED = "reference/more.md"  # the page hooks.py generates (not a file in docs/)


def public_objects(module: types.ModuleType) -> list[tuple[str, object]]:
    """(name, object) for the public functions and classes of ``module``: its
    ``__all__`` and, for a module without one or a package (``gg.nn.Dense`` lives in
    ``gpugrad.nn.layers``), every function or class without a leading ``_`` defined in
    the module or its package; submodules and what it imported from outside gpugrad
    are left out."""
    names = set(getattr(module, "__all__", ()))
    if not hasattr(module, "__all__") or hasattr(module, "__path__"):
        prefix = module.__name__
        for n in dir(module):
            where = getattr(getattr(module, n), "__module__", None) or ""
            if not n.startswith("_") and (where == prefix or where.startswith(prefix + ".")):
                names.add(n)
    out = []
    for n in sorted(names):
        obj = getattr(module, n)
        if isinstance(obj, types.ModuleType) or not callable(obj):
            continue
        if not (getattr(obj, "__module__", None) or "").startswith("gpugrad"):
            continue
        out.append((n, obj))
    return out


def resolve(path: str) -> object | None:
    """The object a ``::: dotted.path`` line names: the longest prefix that is an
    imported module (``gpugrad.checkpoint`` is one, though ``gg.checkpoint`` is the
    function), then attributes."""
    parts = path.split(".")
    if parts[0] == "gpugrad" and len(parts) > 1 and path not in sys.modules:
        try:  # a subpackage gpugrad does not import itself (gpugrad.distributed)
            importlib.import_module(".".join(parts[:2]))
        except ImportError:
            pass
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            break
    else:
        return None
    obj = module
    for part in parts[i:]:
        obj = getattr(obj, part, None)
    return obj


def placed(reference: Path = REFERENCE) -> dict[int, str]:
    """id(object) -> the ``::: path`` that renders it, for every object the reference
    pages name (a class brings its methods; a module rendered with its members, i.e.
    without ``members: false``, brings the names of its ``__all__``)."""
    found: dict[int, str] = {}
    modules: list[tuple[str, object]] = []
    for page in sorted(reference.glob("*.md")):
        blocks = re.findall(r"^::: ([\w.]+)[ \t]*$\n?((?:[ \t]+\S.*\n)*)", page.read_text(), re.M)
        for path, options in blocks:
            obj = resolve(path)
            if obj is None:
                raise ValueError(f"docs/reference/{page.name}: '::: {path}' names nothing")
            found.setdefault(id(obj), path)
            if inspect.isclass(obj):  # its public methods are rendered with it
                for name, member in vars(obj).items():
                    if not name.startswith("_"):
                        found.setdefault(id(member), path)
            elif inspect.ismodule(obj) and not re.search(r"members:\s*false", options):
                modules.append((path, obj))
    for path, module in modules:  # after the pages' own entries, which come first
        for name in getattr(module, "__all__", ()):
            found.setdefault(id(getattr(module, name)), f"{path}.{name}")
    return found


def unplaced(reference: Path = REFERENCE) -> list[tuple[str, str, str]]:
    """(namespace, name, ``:::`` path) of every public object no reference page names,
    each object once."""
    importlib.import_module("gpugrad")
    found = placed(reference)
    out = []
    for namespace, module_name in NAMESPACES.items():
        for name, obj in public_objects(importlib.import_module(module_name)):
            if id(obj) in found:
                continue
            # the namespace path, as the pages write it (griffe resolves functions built
            # at import, such as gg.equal, through it), unless a submodule shadows it
            path = f"{module_name}.{name}"
            if path in sys.modules:
                path = f"{obj.__module__}.{obj.__qualname__}"
            found[id(obj)] = path
            out.append((namespace, name, path))
    return out


def generated_page(reference: Path = REFERENCE) -> str:
    """Markdown of the generated page: the public names not yet on a reference page."""
    rows = unplaced(reference)
    lines = [
        "# More functions",
        "",
        "Public names that no other reference page lists yet (the page is generated "
        "when the site is built, so new functions are documented from the start).",
        "",
    ]
    if not rows:
        lines.append("Every public name is on one of the other reference pages.")
    for namespace in NAMESPACES:
        mine = [r for r in rows if r[0] == namespace]
        if mine:
            lines += [f"## {namespace}", ""]
            lines += [f"::: {path}\n" for _, _, path in mine]
    return "\n".join(lines) + "\n"

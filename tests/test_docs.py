"""The documentation that ships with the project: the mkdocs site builds with warnings as
errors, every page is in it, the guides' code runs, every public name has a docstring and
a place in the API reference, and the README links only to files in the repository."""

import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import gpugrad as gg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"

# the namespaces users reach names through; each must document every public name
NAMESPACES = {
    "gg": gg,
    "gg.nn": gg.nn,
    "gg.optim": gg.optim,
    "gg.autograd": gg.autograd,
    "gg.random": gg.random,
    "gg.memory": gg.memory,
    "gg.kernels": gg.kernels,
    "gg.testing": gg.testing,
    "gg.debug": gg.debug,
}


def _public_objects(module):
    """(name, object) for the public functions and classes of ``module``: its
    ``__all__`` and, for a module without one or a package (``gg.nn.Dense`` lives in
    ``gpugrad.nn.layers``), every function or class without a leading ``_`` defined in
    the module or its package; submodules and what it imported from elsewhere are left
    out."""
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


def _nav_pages():
    """The Markdown files named in mkdocs.yml's nav, relative to docs/."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r"([\w./-]+\.md)\s*$", nav, flags=re.M)


# ---------------------------------------------------------------------- the site


def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict`` (every warning an error: broken links, missing
    docstring targets, unknown options) builds every page of the nav."""
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc}: the docs build needs the 'test' extra (pip install -e '.[test]')")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", GPUGRAD_DEVICE="cpu")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    for page in _nav_pages():
        stem = page[: -len(".md")]
        built = site / (stem[: -len("index")] if stem.endswith("index") else stem + "/")
        html = (built / "index.html").read_text()
        assert "<h1" in html, f"{page}: built without a title"
        title = re.search(r"^# (.+)$", (DOCS / page).read_text(), flags=re.M)
        if title:  # (changelog.md has none: it includes CHANGELOG.md)
            words = title.group(1).split("`")[0].split(":")[0].strip()
            assert words in html, f"{page}: its title {words!r} is not in the built page"
    # the API reference rendered the docstrings (a known one, with its doctest fenced)
    math_page = (site / "reference" / "math" / "index.html").read_text()
    assert 'id="gpugrad.logsumexp"' in math_page
    assert "&gt;&gt;&gt;" in math_page and 'class="gp"' in math_page  # highlighted pycon
    # the benchmark plots come from bench/results/ (docs/_ext/hooks.py)
    plots = sorted(p.name for p in (ROOT / "bench" / "results").glob("*.png"))
    bench_page = (site / "benchmarks" / "index.html").read_text()
    for name in plots:
        assert (site / "bench-results" / name).is_file() and name in bench_page
    # the changelog page includes CHANGELOG.md
    assert "Keep a Changelog" in (site / "changelog" / "index.html").read_text()


def test_every_page_is_in_the_nav():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(pages - set(_nav_pages()))
    assert not missing, f"add these pages to the nav in mkdocs.yml: {missing}"
    gone = sorted(set(_nav_pages()) - pages)
    assert not gone, f"mkdocs.yml's nav names pages that do not exist: {gone}"


# ---------------------------------------------------------------------- the guides' code

_FENCE = re.compile(r"(<!-- not run: [^>]*-->\s*\n)?```python\n(.*?)```", flags=re.S)
GUIDES = sorted(p.name for p in DOCS.glob("*.md"))


@pytest.mark.parametrize("page", GUIDES)
def test_guide_code_runs(page, tmp_path, monkeypatch):
    """Every ```python block of a guide runs, in order, in one namespace (as a reader
    pasting them one after another would); a block preceded by
    ``<!-- not run: reason -->`` is skipped (it needs a GPU, MPI, ...)."""
    blocks = [code for skip, code in _FENCE.findall((DOCS / page).read_text()) if not skip]
    if not blocks:
        return
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    device = gg.device()
    namespace = {"__name__": f"docs_{page[:-3]}"}
    state = gg.random.get_state()
    try:
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"docs/{page} block {i + 1}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(
                    f"docs/{page}, python block {i + 1} failed:\n{code}\n{exc!r}"
                ) from exc
    finally:
        gg.random.set_state(state)
        if gg.device() != device:
            gg.set_device(device)


# ---------------------------------------------------------------------- docstrings


@pytest.mark.parametrize("namespace", sorted(NAMESPACES))
def test_every_public_name_has_a_docstring(namespace):
    missing = [
        f"{namespace}.{name}"
        for name, obj in _public_objects(NAMESPACES[namespace])
        if not (inspect.getdoc(obj) or "").strip()
    ]
    assert not missing, f"public names without a docstring: {missing}"


def _documented():
    """The objects that docs/reference/*.md render (``::: dotted.path`` lines), by id."""
    found = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for path in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.M):
            parts = path.split(".")
            # the longest prefix that is a module (gpugrad.checkpoint is one, though
            # gg.checkpoint is the function), then attributes
            for i in range(len(parts), 0, -1):
                module = sys.modules.get(".".join(parts[:i]))
                if module is not None:
                    break
            obj = module
            for part in parts[i:]:
                obj = getattr(obj, part, None)
            assert obj is not None, f"{page.name}: ::: {path} names nothing"
            found[id(obj)] = page.name
            if inspect.isclass(obj):  # its methods are rendered with it
                for member in vars(obj).values():
                    found[id(member)] = page.name
    return found


def test_reference_covers_every_public_name():
    documented = _documented()
    missing = [
        f"{namespace}.{name}"
        for namespace, module in sorted(NAMESPACES.items())
        for name, obj in _public_objects(module)
        if id(obj) not in documented
    ]
    assert not missing, (
        "public names missing from the API reference; add a '::: gpugrad.<path>' line "
        f"for each to the right page in docs/reference/: {missing}"
    )


# ---------------------------------------------------------------------- README and links

_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("source", ["README.md", "CHANGELOG.md"])
def test_links_point_into_the_repository(source):
    """Relative links resolve to files in the repository (the README is what users
    see first, on the package index too)."""
    text = (ROOT / source).read_text()
    links = [u for u in _LINK.findall(text) if "://" not in u and not u.startswith("mailto:")]
    broken = [u for u in links if not (ROOT / u).resolve().exists()]
    assert not broken, f"{source} links to files not in the repository: {broken}"
    assert "../" not in text, f"{source} links outside the repository"


def test_readme_set_up_commands():
    """The README has exactly two set-up commands: one installs and runs the main
    example, the other installs and runs the tests exactly as CI (``.ci/run``) does."""
    commands = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(commands) == 2, commands
    assert commands[0].endswith("python examples/rosenbrock.py")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert commands[1] == ci
    assert "docs/api.md" in (ROOT / "README.md").read_text()


def test_package_metadata_files():
    """LICENSE (MIT, as pyproject says), py.typed inside the package (the wheel packages
    the whole gpugrad/ folder), and the changelog in Keep a Changelog form."""
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python >= 3.11)
    assert 'license = { text = "MIT" }' in pyproject
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert '"License :: OSI Approved :: MIT License"' in pyproject
    assert '"Typing :: Typed"' in pyproject
    assert (ROOT / "gpugrad" / "py.typed").is_file()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and "### Added" in changelog
    test_extra = re.search(r"^test = \[(.*)\]$", pyproject, flags=re.M).group(1)
    assert '"mkdocs-material>=' in test_extra and '"mkdocstrings[python]>=' in test_extra

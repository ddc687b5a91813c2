"""The documentation that ships with the project: the mkdocs site builds with warnings as
errors, every page is in it, the guides' code runs, every public name has a docstring and
a place in the API reference, and the README links only to files in the repository."""

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gpugrad as gg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
import public_api  # noqa: E402  (docs/_ext: what the API reference covers)


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
        source = DOCS / page
        title = re.search(r"^# (.+)$", source.read_text(), flags=re.M) if source.exists() else None
        if title:  # (changelog.md includes CHANGELOG.md; reference/more.md is generated)
            words = title.group(1).split("`")[0].split(":")[0].strip()
            assert words in html, f"{page}: its title {words!r} is not in the built page"
    # the API reference rendered the docstrings (a known one, with its doctest fenced)
    math_page = (site / "reference" / "math" / "index.html").read_text()
    assert 'id="gpugrad.logsumexp"' in math_page
    assert "&gt;&gt;&gt;" in math_page and 'class="gp"' in math_page  # highlighted pycon
    # every public name has an entry: on a reference page or the generated one
    anchors = set()
    for html_file in (site / "reference").rglob("index.html"):
        anchors |= set(re.findall(r'id="(gpugrad[\w.]*)"', html_file.read_text()))
    placed = public_api.placed()
    placed.update({id(public_api.resolve(path)): path for _, _, path in public_api.unplaced()})
    missing = [
        f"{namespace}.{name}"
        for namespace, module in sorted(public_api.NAMESPACES.items())
        for name, obj in public_api.public_objects(importlib.import_module(module))
        if placed.get(id(obj)) not in anchors
    ]
    assert not missing, f"public names without an entry in the API reference: {missing}"
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
    gone = sorted(set(_nav_pages()) - pages - {public_api.GENERATED})
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


@pytest.mark.parametrize("namespace", sorted(public_api.NAMESPACES))
def test_every_public_name_has_a_docstring(namespace):
    module = importlib.import_module(public_api.NAMESPACES[namespace])
    missing = [
        f"{namespace}.{name}"
        for name, obj in public_api.public_objects(module)
        if not (inspect.getdoc(obj) or "").strip()
    ]
    assert not missing, f"public names without a docstring: {missing}"


def test_reference_pages_name_existing_objects():
    """Every ``::: path`` of docs/reference/ names an object (checked without a build),
    and the generated page lists exactly the public names the pages leave out."""
    placed = public_api.placed()  # raises on a path that names nothing
    assert id(gg.dlgradient) in placed
    assert all(id(public_api.resolve(p)) not in placed for _, _, p in public_api.unplaced())
    page = public_api.generated_page()
    assert page.startswith("# More functions")
    for _, _, path in public_api.unplaced():
        assert f"::: {path}\n" in page


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

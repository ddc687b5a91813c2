"""MkDocs hooks for the documentation site.

``reference/more.md`` is generated: the public names that no page in
``docs/reference/`` lists yet (``public_api.py``), so a new function is in the site
from the day it lands; move it to the right page when convenient.

The benchmark plots live in ``bench/results/`` (the bench scripts write them there);
the site serves them as ``bench-results/<name>.png`` without a copy in ``docs/``, so
a page always shows the plots of the repository as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

# why: the package documented is this checkout's (as mkdocs.yml's `paths: [.]`), not
# another copy an editable install elsewhere put on sys.path
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]
import public_api  # noqa: E402

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def on_files(files, config):
    """Add every ``bench/results/*.png`` to the site as ``bench-results/<name>``, and the
    generated reference page of public names no reference page lists yet."""
    files.append(File.generated(config, public_api.GENERATED, content=public_api.generated_page()))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench-results/{png.name}", abs_src_path=str(png)))
    return files


GALLERY = "<!-- bench-results gallery -->"


def on_page_markdown(markdown, page, config, files):
    """Replace the gallery marker with every plot in ``bench/results/``, so a plot a
    bench script adds (``gpu-<device>.png``) shows up without editing the page."""
    if GALLERY not in markdown:
        return markdown
    shown = [f"![{png.stem}](bench-results/{png.name})" for png in sorted(RESULTS.glob("*.png"))]
    listing = "\n\n".join(
        f"`bench/results/{png.name}`\n\n{img}"
        for png, img in zip(sorted(RESULTS.glob("*.png")), shown)
    )
    return markdown.replace(GALLERY, listing or "*(no plots in bench/results/ yet)*")

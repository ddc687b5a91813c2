"""MkDocs hooks for the documentation site.

The benchmark plots live in ``bench/results/`` (the bench scripts write them there);
the site serves them as ``bench-results/<name>.png`` without a copy in ``docs/``, so
a page always shows the plots of the repository as it is.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def on_files(files, config):
    """Add every ``bench/results/*.png`` to the site as ``bench-results/<name>``."""
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

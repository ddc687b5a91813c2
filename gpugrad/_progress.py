"""Progress display and plots for the example scripts, degrading without their optional
packages: a tqdm bar, or a plain line every 10% of the steps without tqdm; a PNG drawn
with matplotlib, or a sentence saying why there is none. Private (not part of the API):
one copy shared by ``examples/*.py``, which import it after parsing their arguments so
``--help`` stays instant."""

from __future__ import annotations

from pathlib import Path


class _PlainProgress:
    """What a script shows when tqdm is not installed: a line every 10% of the steps.

    >>> with _PlainProgress(4, "demo") as bar:
    ...     for _ in range(4):
    ...         bar.set_postfix(loss="0.5")
    ...         bar.update()
    demo: 1/4 loss=0.5
    demo: 2/4 loss=0.5
    demo: 3/4 loss=0.5
    demo: 4/4 loss=0.5
    """

    def __init__(self, total, desc):
        self.total, self.desc, self.done, self.postfix = total, desc, 0, ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix(self, **values):
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n=1):
        self.done += n
        if self.done == self.total or self.done % max(self.total // 10, 1) == 0:
            print(f"{self.desc}: {self.done}/{self.total} {self.postfix}", flush=True)

    @staticmethod
    def write(text):
        print(text)


class _Silent(_PlainProgress):
    """A progress display that shows nothing (ranks other than 0 of a parallel run)."""

    def update(self, n=1):
        self.done += n

    @staticmethod
    def write(text):
        pass


def progress(total, desc, show=True):
    """A tqdm progress bar over ``total`` steps, plain progress lines when tqdm is not
    installed, or nothing at all with ``show=False``; use it as a context manager with
    ``update()``, ``set_postfix(...)`` and ``write(text)``."""
    if not show:
        return _Silent(total, desc)
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, desc=desc)


def save_plot(draw, path, what="The loss curve"):
    """Call ``draw(plt)`` on a new matplotlib figure and write it to ``path`` (a PNG);
    prints where (``"<what> was written to <path>."``), or why there is no plot.
    Returns the resolved path, or ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot was written (pip install matplotlib).")
        return None
    path = Path(path).resolve()
    fig = plt.figure(figsize=(6, 4))
    draw(plt)
    plt.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"{what} was written to {path}.")
    return path

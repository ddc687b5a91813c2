import logging
import os

import numpy as np
import pytest

os.environ.setdefault("GPUGRAD_DEVICE", "cpu")
# every hand-written kernel stays covered: no vendor library, no timing-based choice
os.environ["GPUGRAD_KERNEL_POLICY"] = "hand"
logging.getLogger("gpugrad").setLevel(logging.ERROR)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def float64():
    """Layer parameters and creation functions default to float64 inside the test (for
    comparisons with float64 references and finite differences); float32 after."""
    import gpugrad as gg

    previous = gg.set_default_dtype(np.float64)
    yield
    gg.set_default_dtype(previous)


# the files with the longest tests, started first (in this order) so that the workers
# finish together: pytest-xdist hands out files in collection order (with
# --no-loadscope-reorder), and a long file handed out last would run alone at the end
LONG_FILES = (
    "tests/test_cudasim_suite.py",  # the suite on cuda-sim, ~4 min of work
    "tests/kernels/test_kernel_structure.py",  # cold nvcc/NVRTC compiles, SASS
    "tests/kernels/test_kernels_emu.py",  # AddressSanitizer build of every kernel
    "tests/kernels/test_kernel_compile.py",
    "tests/test_emu_device.py",
    "tests/test_examples.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


# ---------------------------------------------------------------- pytest-xdist
# why: the suite runs on two processes in CI (pytest-xdist, `-n auto`), and the registry
# meta-test (tests/test_zz_registry.py) needs every process's finite-difference checks.
# Each worker sends its ``gg.testing.CHECKED`` to the controller, which repeats the
# meta-test over the union once all workers are done and fails the run if it fails.


# the controller's union of the workers' checks, and whether the meta-test was selected
_REGISTRY = pytest.StashKey[dict]()


def _is_worker(config):
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session, exitstatus):
    if _is_worker(session.config):
        from gpugrad.testing import CHECKED

        session.config.workeroutput["gg_checked"] = {k: sorted(v) for k, v in CHECKED.items()}
    else:
        _controller_registry_check(session)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    out = getattr(node, "workeroutput", None) or {}
    state = node.config.stash.setdefault(_REGISTRY, {"checked": {1: set(), 2: set()}})
    for k, v in out.get("gg_checked", {}).items():
        state["checked"][int(k)].update(v)
    state["selected"] = state.get("selected", False) or bool(out.get("gg_registry_selected"))


def _controller_registry_check(session):
    config = session.config
    state = config.stash.get(_REGISTRY, {})
    if not state.get("selected"):
        return
    from tests.test_zz_registry import missing_checks

    missing = missing_checks(state["checked"])
    if missing:
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"FAILED registry meta-test (all workers): {missing}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

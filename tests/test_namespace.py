"""The public namespace (issue 12): ``gg.__all__`` is explicit, names exactly what
``from gpugrad import *`` exports and ``dir(gg)`` shows, keeps every name of the API
contract, and lets no implementation module or helper leak into ``gg.*``; the
implementation modules stay importable by their full names."""

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import gpugrad as gg

ROOT = Path(__file__).resolve().parents[1]

PUBLIC_MODULES = {
    "autograd",
    "debug",
    "distributed",
    "kernels",
    "linalg",
    "memory",
    "nn",
    "optim",
    "random",
    "testing",
}


def test_all_entries_exist_once():
    assert len(gg.__all__) == len(set(gg.__all__)), "a name is listed twice in gg.__all__"
    missing = [n for n in gg.__all__ if not hasattr(gg, n)]
    assert not missing, f"gg.__all__ names what gpugrad does not have: {missing}"
    assert all(isinstance(n, str) and not n.startswith("_") for n in gg.__all__)


def test_star_import_exports_exactly_all():
    namespace = {}
    exec("from gpugrad import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(gg.__all__)


def test_modules_in_all_are_the_public_subpackages():
    modules = {n for n in gg.__all__ if isinstance(getattr(gg, n), types.ModuleType)}
    assert modules == PUBLIC_MODULES
    assert gg.kernels is importlib.import_module("gpugrad.backend.kernels")
    assert gg.distributed is importlib.import_module("gpugrad.distributed")


def test_dir_shows_only_the_public_names():
    shown = [n for n in dir(gg) if not (n.startswith("__") and n.endswith("__"))]
    assert sorted(shown) == sorted(gg.__all__)
    for private in ("ops", "tape", "array", "creation", "backend", "_backend", "tree", "io"):
        assert private not in dir(gg)
    assert "annotations" not in dir(gg)  # the __future__ import is not an API name


def test_every_exported_name_is_in_all():
    """A function or class exported into gpugrad/__init__.py must be listed in __all__
    too (the list is explicit); this names the ones that are not."""
    unlisted = [
        n
        for n, v in vars(gg).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n not in gg.__all__
    ]
    assert not unlisted, f"add these to __all__ in gpugrad/__init__.py: {unlisted}"
    assert "ops" not in vars(gg) and "tape" not in vars(gg)


def test_every_public_function_is_gpugrads_own_and_documented():
    for name in gg.__all__:
        obj = getattr(gg, name)
        if isinstance(obj, types.ModuleType):
            assert obj.__doc__, f"gg.{name} has no module docstring"
            continue
        if obj is None:  # gg.testing when its optional dependency is missing
            continue
        assert callable(obj), f"gg.{name} is not a function or class: {obj!r}"
        assert (getattr(obj, "__module__", "") or "").startswith("gpugrad"), name
        assert (obj.__doc__ or "").strip(), f"gg.{name} has no docstring"


def test_api_contract_names_are_exported():
    """Every ``gg.<name>`` the API contract (docs/api.md) names is in __all__."""
    text = (ROOT / "docs" / "api.md").read_text()
    named = set(re.findall(r"\bgg\.([A-Za-z_]\w*)\b(?!\.)", text))
    assert len(named) > 50
    assert named <= set(gg.__all__), sorted(named - set(gg.__all__))


def test_implementation_modules_stay_importable():
    import gpugrad.ops as ops
    import gpugrad.tape
    from gpugrad import tape
    from gpugrad.ops import bind

    assert ops is sys.modules["gpugrad.ops"] and bind is ops.bind
    assert gpugrad.tape is tape is sys.modules["gpugrad.tape"]  # attribute access still works
    assert gg.backend is sys.modules["gpugrad.backend"]
    assert callable(gg.tree.leaves)
    # mock.patch by dotted path reaches into an implementation module
    with mock.patch("gpugrad.tape.is_recording", return_value="patched"):
        assert gpugrad.tape.is_recording() == "patched"
    assert gpugrad.tape.is_recording() is False
    # gg.checkpoint is the function; the module of the same name is gpugrad.checkpoint
    assert callable(gg.checkpoint)
    assert importlib.import_module("gpugrad.checkpoint").checkpoint is gg.checkpoint


def test_unknown_name_is_an_attribute_error():
    try:
        gg.no_such_function  # noqa: B018
    except AttributeError as exc:
        assert "no_such_function" in str(exc)
    else:
        raise AssertionError("gg.no_such_function did not raise")
    assert not hasattr(gg, "numpy_dispatch_does_not_exist")


def test_import_stays_lazy():
    """``import gpugrad`` does not import gpugrad.distributed (nor MPI); ``gg.distributed``
    and the MATLAB spmd names import it when first used."""
    code = (
        "import sys, gpugrad as gg\n"
        "assert 'gpugrad.distributed' not in sys.modules\n"
        "assert 'distributed' in dir(gg) and 'spmd_plus' in gg.__all__\n"
        "assert 'gpugrad.distributed' not in sys.modules\n"
        "assert gg.spmd_size() == 1 and gg.distributed.size() == 1\n"
        "assert 'mpi4py' not in sys.modules\n"
        "import types\n"
        "modules = {n for n, v in vars(gg).items() if isinstance(v, types.ModuleType)}\n"
        f"assert modules <= set({sorted(PUBLIC_MODULES)!r}), modules\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"GPUGRAD_DEVICE": "cpu", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]

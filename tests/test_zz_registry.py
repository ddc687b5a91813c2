"""Meta-test: every registered primitive must have been exercised by a first- and a
second-order finite-difference check somewhere in the suite (this file runs last)."""

import gpugrad as gg
from gpugrad.ops import REGISTRY
from gpugrad.testing import CHECKED


def test_every_registered_primitive_has_a_gradient_check():
    # run the core registry checks too, so this holds when run alone
    from tests.test_gradients import CASES

    if not CHECKED[2]:
        for fn, args in CASES.values():
            gg.testing.check_gradient(fn, *args, order=2)
    checked = CHECKED[1] | CHECKED[2]
    missing = sorted(
        name for name, p in REGISTRY.items() if p.differentiable and name not in checked
    )
    assert not missing, f"primitives without a finite-difference check: {missing}"
    missing2 = sorted(
        name for name, p in REGISTRY.items() if p.differentiable and name not in CHECKED[2]
    )
    assert not missing2, f"primitives without a second-order check: {missing2}"

"""Meta-test: every registered primitive must have been exercised by a first- and a
second-order finite-difference check somewhere in the suite (this file runs last).

Under pytest-xdist each worker process sees only its share of the suite: there the test
reports that it was selected, and the controller repeats the check over the union of all
workers' checks once they are done (tests/conftest.py), failing the run if any is missing.
"""

import gpugrad as gg
from gpugrad.ops import REGISTRY
from gpugrad.testing import CHECKED


def missing_checks(checked):
    """Messages for the differentiable primitives that ``checked`` ({order: names}) lacks."""
    differentiable = sorted(name for name, p in REGISTRY.items() if p.differentiable)
    first = [n for n in differentiable if n not in checked[1] | checked[2]]
    second = [n for n in differentiable if n not in checked[2]]
    out = []
    if first:
        out.append(f"primitives without a finite-difference check: {first}")
    if second:
        out.append(f"primitives without a second-order check: {second}")
    return out


def test_every_registered_primitive_has_a_gradient_check(request):
    # run the core registry checks too, so this holds when run alone
    from tests.test_gradients import CASES

    if not CHECKED[2]:
        for fn, args in CASES.values():
            gg.testing.check_gradient(fn, *args, order=2)
    if hasattr(request.config, "workerinput"):
        request.config.workeroutput["gg_registry_selected"] = True
        return
    missing = missing_checks(CHECKED)
    assert not missing, "; ".join(missing)


def test_missing_checks_names_each_gap():
    # the helper both this test and the xdist controller use must see a gap
    names = sorted(n for n, p in REGISTRY.items() if p.differentiable)
    assert missing_checks({1: set(names), 2: set(names)}) == []
    gaps = missing_checks({1: set(names[1:]), 2: set(names[2:])})
    assert len(gaps) == 2 and names[0] in gaps[0] and names[1] in gaps[1]

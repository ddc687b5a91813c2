"""checkpoint_sequential's memory-budget planner: the plain run is a candidate (a
budget that fits everything costs no recomputation and no probe), and otherwise the
fewest recomputations among uniform segments and Revolve that fit the budget; the
attempt that measures the layers is undone (random state, BatchNorm statistics)."""

from __future__ import annotations

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.checkpoint import _candidates, optimal_recomputations

DEPTH, WIDTH, BATCH = 16, 16, 8


@pytest.fixture(autouse=True)
def _f64(float64):
    yield


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return [gg.dlarray(rng.normal(0, 0.3, (WIDTH, WIDTH))) for _ in range(DEPTH)]


def _run(budget, calls=None, weights=None):
    weights = _weights() if weights is None else weights
    x = gg.dlarray(np.random.default_rng(1).normal(size=(BATCH, WIDTH)))

    def layer_of(w):
        def layer(h):
            if calls is not None:
                calls.append(1)
            return gg.tanh(h @ w)

        return layer

    def loss(ws, x):
        layers = [layer_of(w) for w in ws]
        h = x * 1.0  # a non-leaf input, as inside a network
        if budget is None:
            for layer in layers:
                h = layer(h)
        else:
            h = gg.checkpoint_sequential(layers, h, memory_budget=budget)
        return gg.dlgradient(gg.sum(h**2), ws, x)

    with gg.memory.track() as m:
        grads = gg.dlfeval(loss, weights, x)
    stats = None if budget is None else gg.checkpoint_sequential.last_stats
    return grads, m.peak_bytes, stats


def _same(a, b):
    for p, q in zip(gg.tree.leaves(a), gg.tree.leaves(b)):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-12, atol=1e-14)


def test_a_budget_that_fits_everything_runs_each_layer_once():
    want, plain_peak, _ = _run(None)
    calls = []
    got, peak, stats = _run("1GB", calls)
    assert len(calls) == DEPTH  # 16 layer calls, not 33
    assert stats.schedule == "none" and stats.probe_calls == 0
    assert stats.recomputations == 0 and stats.layer_calls == DEPTH
    assert peak == plain_peak
    _same(want, got)


def test_fewest_recomputations_that_fit_down_to_the_minimum():
    want, plain_peak, _ = _run(None)
    _, _, probe = _run(plain_peak - 1)  # to learn the measured sizes
    options = _candidates(
        DEPTH, True, probe.activation_bytes, probe.step_saved_bytes, probe.step_saved_bytes
    )
    minimum = min(peak for _, peak, _, _ in options)
    budgets = sorted({plain_peak, *np.linspace(minimum, plain_peak - 1, 12).astype(int)})
    previous = None
    for budget in reversed(budgets):  # from everything-fits down to the minimum
        calls = []
        got, peak, stats = _run(int(budget), calls)
        _same(want, got)
        assert peak <= budget, (budget, peak, stats)
        if budget >= plain_peak:
            assert stats.schedule == "none"
            continue
        fitting = [o for o in options if o[1] <= budget]
        assert stats.recomputations == min(o[0] for o in fitting), (budget, stats)
        assert len(calls) == DEPTH + stats.recomputations + stats.probe_calls
        if stats.schedule == "revolve":
            assert stats.recomputations == optimal_recomputations(DEPTH, stats.snapshots)
            # Revolve with the largest snapshot count that fits
            larger = [o for o in fitting if o[2] == "revolve" and o[3] > stats.snapshots]
            assert all(o[0] >= stats.recomputations for o in larger)
        if previous is not None:
            assert stats.recomputations >= previous  # less memory, never fewer recomputations
        previous = stats.recomputations
    with pytest.raises(ValueError, match="too small for this chain"):
        _run(int(minimum) - 1)


def test_the_measuring_attempt_is_undone_when_the_plain_run_does_not_fit():
    """A chain with BatchNorm and Dropout: a budget that needs checkpointing gives the
    plain run's gradients, and the running statistics move exactly once."""

    def net(seed):
        gg.random.seed(seed)
        return [
            layer
            for _ in range(6)
            for layer in (gg.nn.Dense(WIDTH, WIDTH), gg.nn.BatchNorm(WIDTH), gg.nn.Dropout(0.2))
        ]

    x = gg.dlarray(np.random.default_rng(3).normal(size=(BATCH, WIDTH)))

    def step(layers, budget):
        def loss(ls):
            h = x * 1.0
            if budget is None:
                for layer in ls:
                    h = layer(h)
            else:
                h = gg.checkpoint_sequential(ls, h, memory_budget=budget)
            return gg.dlgradient(gg.sum(h**2), ls)

        gg.random.seed(7)
        return gg.dlfeval(loss, layers)

    plain_layers, tight_layers = net(0), net(0)
    want = step(plain_layers, None)
    got = step(tight_layers, 40 * BATCH * WIDTH * 8)
    stats = gg.checkpoint_sequential.last_stats
    assert stats.schedule != "none" and stats.probe_calls == 2
    _same(want, got)
    for a, b in zip(plain_layers, tight_layers):
        if isinstance(a, gg.nn.BatchNorm):
            np.testing.assert_allclose(b.running_mean, a.running_mean, rtol=1e-12)
            np.testing.assert_allclose(b.running_var, a.running_var, rtol=1e-12)

"""checkpoint_sequential's memory-budget planner: every layer's sizes are measured (on
its own, once per chain structure), the plain run is a candidate (a budget that fits
everything costs no recomputation), and otherwise the fewest recomputations among
uniform segments and Revolve that fit the budget, on chains of one layer size and of
mixed sizes; measuring is undone (random state, BatchNorm statistics) and never holds
more memory than the budget allows."""

from __future__ import annotations

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.checkpoint import _SIZES, _candidates, optimal_recomputations

DEPTH, WIDTH, BATCH = 16, 16, 8


@pytest.fixture(autouse=True)
def _f64(float64):
    _SIZES.clear()  # every test measures its chains itself
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
    got, peak, stats = _run("1GB", calls)  # the first step measures each layer once
    assert stats.schedule == "none" and stats.probe_calls == DEPTH
    assert stats.recomputations == 0 and len(calls) == 2 * DEPTH
    assert peak == plain_peak  # measuring held less than the plain run
    _same(want, got)
    calls = []
    got, peak, stats = _run("1GB", calls, weights=_weights(1))  # the next step, new values
    assert len(calls) == DEPTH  # 16 layer calls, not 33
    assert stats.schedule == "none" and stats.probe_calls == 0
    assert stats.recomputations == 0 and stats.layer_calls == DEPTH
    assert peak == plain_peak


def test_sizes_are_remembered_per_chain_structure():
    _run(8000)
    assert gg.checkpoint_sequential.last_stats.probe_calls == DEPTH
    _run(8000, weights=_weights(2))  # other values, same shapes: measured already
    assert gg.checkpoint_sequential.last_stats.probe_calls == 0
    rng = np.random.default_rng(0)
    wider = [gg.dlarray(rng.normal(0, 0.3, (WIDTH, WIDTH)))] * (DEPTH - 1)
    wider.append(gg.dlarray(rng.normal(0, 0.3, (WIDTH, 2 * WIDTH))))
    _run(8000, weights=wider)  # another structure: measured again
    assert gg.checkpoint_sequential.last_stats.probe_calls == DEPTH
    assert gg.checkpoint_sequential.last_stats.layer_sizes.activation[-1] == BATCH * 2 * WIDTH * 8


def _chain_step(layers, x, budget, calls=None):
    """One step through ``layers`` (gg.nn layers) on ``x``: the gradients of every
    parameter and of ``x``, the engine's peak saved bytes and the planner's stats."""

    def counted(layer):
        def call(h):
            if calls is not None:
                calls.append(1)
            return layer(h)

        return call

    def loss(ls, x):
        h = x * 1.0
        chain = [counted(layer) for layer in ls]
        if budget is None:
            for layer in chain:
                h = layer(h)
        else:
            h = gg.checkpoint_sequential(chain, h, memory_budget=budget)
        return gg.dlgradient(gg.sum(h**2), ls, x)

    with gg.memory.track() as m:
        grads = gg.dlfeval(loss, layers, x)
    return grads, m.peak_bytes, None if budget is None else gg.checkpoint_sequential.last_stats


def _widths_chain():
    """Dense layers whose widths vary 4x (up and down), tanh between."""
    gg.random.seed(0)
    widths = [16, 64, 16, 32, 64, 64, 16, 16, 64, 32, 16]
    layers = [gg.nn.Dense(a, b, activation=gg.tanh) for a, b in zip(widths, widths[1:])]
    return layers, gg.dlarray(np.random.default_rng(1).normal(size=(BATCH, widths[0])))


def _conv_dense_chain():
    """Convolutions (a wide activation), a flatten and Dense layers (narrow ones)."""
    gg.random.seed(0)
    layers = [
        gg.nn.Conv2D((3, 3, 2, 8), padding="same", activation=gg.relu),
        gg.nn.Conv2D((3, 3, 8, 8), padding="same", activation=gg.tanh),
        gg.nn.Conv2D((3, 3, 8, 4), strides=(2, 2), padding="same"),
        gg.nn.Flatten(),
        gg.nn.Dense(4 * 4 * 4, 32, activation=gg.tanh),
        gg.nn.Dense(32, 32, activation=gg.tanh),
        gg.nn.Dense(32, 8, activation=gg.tanh),
        gg.nn.Dense(8, 8),
    ]
    return layers, gg.dlarray(np.random.default_rng(1).normal(size=(4, 8, 8, 2)))


def _late_wide_chain():
    """Narrow layers, then one 16x wider: a layer larger than every one before it."""
    gg.random.seed(0)
    widths = [16] * 12 + [256, 16]
    layers = [gg.nn.Dense(a, b, activation=gg.tanh) for a, b in zip(widths, widths[1:])]
    return layers, gg.dlarray(np.random.default_rng(1).normal(size=(BATCH, widths[0])))


def _tanh_chain():
    rng = np.random.default_rng(0)
    layers = [gg.nn.Dense(WIDTH, WIDTH, activation=gg.tanh) for _ in range(DEPTH)]
    for layer in layers:  # seeded NumPy weights, independent of gg.random
        layer.weight = gg.dlarray(rng.normal(0, 0.3, (WIDTH, WIDTH)))
    return layers, gg.dlarray(np.random.default_rng(1).normal(size=(BATCH, WIDTH)))


@pytest.mark.parametrize("make", [_tanh_chain, _widths_chain, _conv_dense_chain, _late_wide_chain])
def test_fewest_recomputations_that_fit_down_to_the_minimum(make):
    """From "everything fits" down to the smallest budget any schedule fits, on chains
    of one layer size and of mixed sizes: the measured peak is within the budget, the
    gradients are the plain run's, and the schedule has the fewest recomputations among
    the candidates that fit (less memory never gives fewer recomputations)."""
    layers, x = make()
    n = len(layers)
    want, plain_peak, _ = _chain_step(layers, x, None)
    _, _, probe = _chain_step(layers, x, plain_peak - 1, [])  # measures the sizes
    sizes = probe.layer_sizes
    assert len(sizes.tape) == n and len(sizes.activation) == n + 1
    options = _candidates(sizes, True)
    minimum = min(peak for _, peak, _, _ in options)
    budgets = sorted({plain_peak, *np.linspace(minimum, plain_peak - 1, 10).astype(int)})
    previous = None
    for budget in reversed(budgets):
        calls = []
        got, peak, stats = _chain_step(layers, x, int(budget), calls)
        _same(want, got)
        assert peak <= budget, (budget, peak, stats.schedule, stats.predicted_peak_bytes)
        if budget >= plain_peak:
            assert stats.schedule == "none" and stats.recomputations == 0
            assert stats.probe_calls == 0  # measured by the first call already
            continue
        fitting = [o for o in options if o[1] <= budget]
        assert stats.recomputations == min(o[0] for o in fitting), (budget, stats)
        assert stats.predicted_peak_bytes <= budget
        assert len(calls) == n + stats.recomputations + stats.probe_calls
        if stats.schedule == "revolve":
            assert stats.recomputations == optimal_recomputations(n, stats.snapshots)
            # Revolve with the largest snapshot count that fits
            larger = [o for o in fitting if o[2] == "revolve" and o[3] > stats.snapshots]
            assert all(o[0] >= stats.recomputations for o in larger)
        if previous is not None:
            assert stats.recomputations >= previous  # less memory, never fewer recomputations
        previous = stats.recomputations
    with pytest.raises(ValueError, match="too small for this chain"):
        _chain_step(layers, x, int(minimum) - 1)


def test_layer_sizes_are_measured_per_layer():
    """The planner sees each layer's own sizes: a 4x wider layer has a 4x larger
    activation, and measuring stays within the budget."""
    layers, x = _widths_chain()
    _, plain_peak, _ = _chain_step(layers, x, None)
    budget = plain_peak * 2 // 3
    with gg.memory.track() as m:
        _chain_step(layers, x, budget)
    stats = gg.checkpoint_sequential.last_stats
    sizes = stats.layer_sizes
    widths = [16, 64, 16, 32, 64, 64, 16, 16, 64, 32, 16]
    assert sizes.activation == [BATCH * w * 8 for w in widths]
    assert stats.probe_calls == len(layers)
    assert m.peak_bytes <= budget
    assert stats.activation_bytes == max(sizes.activation)


def test_measuring_is_undone():
    """A chain with BatchNorm and Dropout: a budget that needs checkpointing gives the
    plain run's gradients (the same dropout masks), and the running statistics move
    exactly once."""

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
    with gg.memory.track() as plain:
        want = step(plain_layers, None)
    budget = plain.peak_bytes * 2 // 3
    with gg.memory.track() as tight:
        got = step(tight_layers, budget)
    stats = gg.checkpoint_sequential.last_stats
    assert stats.schedule != "none" and stats.probe_calls == len(tight_layers)
    assert tight.peak_bytes <= budget
    _same(want, got)
    for a, b in zip(plain_layers, tight_layers):
        if isinstance(a, gg.nn.BatchNorm):
            for stat in ("running_mean", "running_var"):  # raw arrays of the device
                got, want = (gg.backend.to_host(getattr(m, stat)) for m in (b, a))
                np.testing.assert_allclose(got, want, rtol=1e-12)


def test_the_vectorized_uniform_search_is_the_plain_definition():
    """``best_uniform`` (every segment count at once, NumPy) agrees with ``uniform`` (one
    schedule at a time) on random chains of mixed sizes."""
    from gpugrad.checkpoint import ChainSizes, _Model

    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 16))
        sizes = ChainSizes(
            [int(v) for v in rng.integers(1, 100, n + 1)],
            [int(v) for v in rng.integers(0, 100, n)],
            [int(v) for v in rng.integers(0, 2, n) * rng.integers(1, 100, n)],
            [int(v) for v in rng.integers(0, 2, n) * rng.integers(1, 100, n)],
        )
        model = _Model(sizes, bool(trial % 2))
        for m in range(n):
            want = min((model.uniform(k, m), k) for k in range(1, n - m + 1))
            assert model.best_uniform(m) == want, (sizes, m)

"""Checkpointing: gradients equal with and without recomputation, memory, schedules."""

from __future__ import annotations

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.checkpoint import optimal_recomputations, parse_bytes, revolve_schedule


def _mlp(depth, width, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    weights = [gg.dlarray(rng.normal(0, scale, (width, width))) for _ in range(depth)]
    biases = [gg.dlarray(rng.normal(0, 0.1, (width,))) for _ in range(depth)]
    return weights, biases


def _layers(weights, biases, calls=None):
    def make(w, b):
        def layer(h):
            if calls is not None:
                calls.append(1)
            return gg.tanh(h @ w + b)

        return layer

    return [make(w, b) for w, b in zip(weights, biases)]


def _close(a, b, tol=1e-12):
    for p, q in zip(gg.tree.leaves(a), gg.tree.leaves(b)):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=tol, atol=tol)


def _chain_grads(run, depth=6, width=5):
    weights, biases = _mlp(depth, width)
    x = gg.dlarray(np.random.default_rng(1).normal(size=(3, width)))

    def loss(weights, biases, x):
        y = gg.sum(run(_layers(weights, biases), x) ** 2)
        return y, gg.dlgradient(y, weights, biases, x)

    return gg.dlfeval(loss, weights, biases, x)


def _plain(layers, x):
    for layer in layers:
        x = layer(x)
    return x


@pytest.mark.parametrize(
    "options",
    [{}, {"segments": 1}, {"segments": 3}, {"segments": 6}, {"snapshots": 1}, {"snapshots": 2}],
)
def test_checkpoint_sequential_gradients_equal_plain(options):
    expected = _chain_grads(_plain)
    got = _chain_grads(lambda layers, x: gg.checkpoint_sequential(layers, x, **options))
    _close(expected, got)


def test_checkpoint_closure_weights_and_containers():
    def loss(x, w, params, use):
        def block(v):  # w and params come from the closure, not the arguments
            h = gg.tanh(v @ w + params["b"])
            return {"h": h, "pair": (gg.sin(h), gg.exp(v))}

        out = gg.checkpoint(block, x) if use else block(x)
        y = gg.sum(out["h"]) + gg.sum(out["pair"][0] * out["pair"][1])
        return gg.dlgradient(y, x, w, params)

    x = gg.dlarray([[1.0, 2.0], [-0.5, 0.3]])
    w = gg.dlarray([[0.3, -0.2], [0.1, 0.5]])
    params = {"b": gg.dlarray([0.1, -0.3])}
    want = gg.dlfeval(loss, x, w, params, False)
    got = gg.dlfeval(loss, x, w, params, True)
    assert all(float(abs(g).sum()) > 0 for g in gg.tree.leaves(want))
    _close(want, got)


def test_nested_checkpoints_and_recompute_in_gradient():
    inner = gg.recompute_in_gradient(lambda v: gg.sin(v) * gg.exp(v))

    def outer(v):
        return gg.tanh(inner(v) + gg.checkpoint(lambda u: u**3, v))

    def loss(x, wrap):
        f = gg.recompute_in_gradient(outer) if wrap else outer
        return gg.dlgradient(gg.sum(f(f(x))), x)

    x = gg.dlarray([0.3, -0.7, 1.1])
    _close(gg.dlfeval(loss, x, False), gg.dlfeval(loss, x, True))


def test_second_order_matches_finite_differences():
    def f(v):
        return gg.sum(gg.tanh(v) ** 3 * gg.sin(v))

    def hess_diag(x, use):
        fn = gg.recompute_in_gradient(f) if use else f
        g = gg.dlgradient(fn(x), x, enable_higher_derivatives=True)
        return gg.dlgradient(gg.sum(g), x)

    def grad(x):
        return gg.dlgradient(f(x), x)

    x0 = np.array([0.3, -0.8, 1.2])
    got = gg.dlfeval(hess_diag, gg.dlarray(x0), True).numpy()
    want = gg.dlfeval(hess_diag, gg.dlarray(x0), False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    eps = 1e-6
    fd = np.zeros(3)
    for i in range(3):
        e = np.zeros(3)
        e[i] = eps
        gp = gg.dlfeval(grad, gg.dlarray(x0 + e)).numpy()
        gm = gg.dlfeval(grad, gg.dlarray(x0 - e)).numpy()
        fd[i] = (gp - gm).sum() / (2 * eps)
    np.testing.assert_allclose(got.sum(axis=0) if got.ndim > 1 else got, fd, rtol=1e-5)


def test_random_draws_are_replayed():
    def noisy(v):
        return gg.tanh(v * gg.random.normal(shape=v.shape)) + gg.random.uniform(shape=v.shape)

    def loss(x, use):
        fn = gg.recompute_in_gradient(noisy) if use else noisy
        y = gg.sum(fn(x) ** 2)
        after = gg.random.normal(shape=(2,))  # the caller's stream continues unchanged
        g = gg.dlgradient(y, x)
        return g, after, gg.random.normal(shape=(2,))

    x = gg.dlarray([0.5, -1.0, 2.0])
    gg.random.seed(7)
    want = gg.dlfeval(loss, x, False)
    gg.random.seed(7)
    got = gg.dlfeval(loss, x, True)
    _close(want, got)


def test_dropout_replayed_in_training_mode():
    if not hasattr(gg, "autograd") or not hasattr(gg, "dropout"):
        pytest.skip("gg.autograd / gg.dropout not available")
    weights, biases = _mlp(4, 6)
    x = gg.dlarray(np.random.default_rng(3).normal(size=(5, 6)))

    def layers_for(ws, bs):
        return [lambda h, w=w, b=b: gg.dropout(gg.tanh(h @ w + b), 0.3) for w, b in zip(ws, bs)]

    def loss(ws, bs, x, use):
        layers = layers_for(ws, bs)
        y = gg.checkpoint_sequential(layers, x, segments=2) if use else _plain(layers, x)
        return gg.dlgradient(gg.sum(y**2), ws, bs, x)

    results = []
    for use in (False, True):
        gg.random.seed(11)
        with gg.autograd.train_mode():
            results.append(gg.dlfeval(loss, weights, biases, x, use))
    _close(*results)


def test_mxnet_and_swift_faces():
    if not hasattr(gg, "gradient") or not hasattr(gg, "autograd"):
        pytest.skip("gg.gradient / gg.autograd not available yet")

    def f(v):
        return gg.sum(gg.tanh(v) * gg.exp(v))

    x0 = np.array([0.2, -0.4, 0.9])
    want = gg.gradient(f)(gg.dlarray(x0)).numpy()
    got = gg.gradient(gg.recompute_in_gradient(f))(gg.dlarray(x0)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    x = gg.dlarray(x0)
    x.attach_grad()
    with gg.autograd.record():
        y = gg.checkpoint(f, x)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12, atol=1e-12)


def test_with_derivative_hook_called_once():
    if not hasattr(gg, "with_derivative"):
        pytest.skip("gg.with_derivative not available yet")
    seen = []

    def f(v):
        return gg.sum(gg.with_derivative(gg.sin(v), lambda d: seen.append(1)))

    gg.dlfeval(lambda x: gg.dlgradient(gg.checkpoint(f, x), x), gg.dlarray([1.0, 2.0]))
    assert len(seen) == 1


def test_shape_change_raises():
    calls = []

    def unstable(v):
        calls.append(1)
        return gg.tanh(v) if len(calls) == 1 else gg.tanh(v)[:1]

    def loss(x):
        return gg.dlgradient(gg.sum(gg.checkpoint(unstable, x)), x)

    with pytest.raises(gg.CheckpointError, match="unstable"):
        gg.dlfeval(loss, gg.dlarray([1.0, 2.0]))


def test_structure_change_raises():
    calls = []

    def unstable(v):
        calls.append(1)
        return (gg.tanh(v),) if len(calls) == 1 else [gg.tanh(v)]

    def loss(x):
        return gg.dlgradient(gg.sum(gg.checkpoint(unstable, x)[0]), x)

    with pytest.raises(gg.CheckpointError, match="structure"):
        gg.dlfeval(loss, gg.dlarray([1.0, 2.0]))


def test_mutating_input_raises():
    def mutating(v):
        v[0] = 5.0
        return gg.tanh(v)

    def loss(x):
        return gg.dlgradient(gg.sum(gg.checkpoint(mutating, x * 2)), x)

    with pytest.raises(gg.CheckpointError, match="in place"):
        gg.dlfeval(loss, gg.dlarray([1.0, 2.0]))


def test_untraced_call_is_plain():
    assert float(gg.checkpoint(lambda v: gg.sum(v * 2), gg.dlarray([1.0, 2.0]))) == 6.0
    y = gg.checkpoint_sequential([gg.tanh, gg.sin], gg.dlarray([0.5]))
    np.testing.assert_allclose(y.numpy(), np.sin(np.tanh([0.5])))


def _peak(run, depth=16, width=64, batch=32):
    weights, biases = _mlp(depth, width, scale=0.15)
    x = gg.dlarray(np.random.default_rng(2).normal(size=(batch, width)))

    def loss(ws, bs, x):
        return gg.dlgradient(gg.sum(run(_layers(ws, bs), x)), ws, bs, x)

    with gg.memory.track() as m:
        grads = gg.dlfeval(loss, weights, biases, x)
    return m.peak_bytes, grads


def test_memory_sqrt_segments_at_most_half():
    plain, want = _peak(_plain)
    ckpt, got = _peak(lambda layers, x: gg.checkpoint_sequential(layers, x))
    _close(want, got)
    assert ckpt <= 0.5 * plain, (ckpt, plain)


@pytest.mark.parametrize("acts", [4, 6, 9, 15])
def test_memory_budget_respected(acts):
    act = 32 * 64 * 8
    budget = acts * act
    plain, want = _peak(_plain)
    ckpt, got = _peak(lambda ls, x: gg.checkpoint_sequential(ls, x, memory_budget=budget))
    stats = gg.checkpoint_sequential.last_stats
    _close(want, got)
    assert ckpt <= budget, (ckpt, budget, stats)
    assert stats.predicted_peak_bytes >= ckpt
    if stats.schedule == "revolve":
        assert stats.recomputations == optimal_recomputations(16, stats.snapshots)
    elif stats.schedule == "none":
        assert stats.recomputations == 0
    else:
        assert stats.recomputations == 16 - stats.plain_tail


def test_memory_budget_strings_and_errors():
    assert parse_bytes("256MB") == 256 * 10**6
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("64 KiB") == 65536
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes("lots")
    with pytest.raises(ValueError, match="at least"):
        _peak(lambda ls, x: gg.checkpoint_sequential(ls, x, memory_budget="1KB"))
    for bad in (0, 17):
        with pytest.raises(ValueError, match="segments"):
            _peak(lambda ls, x, bad=bad: gg.checkpoint_sequential(ls, x, segments=bad))


def test_revolve_counts_match_binomial_formula():
    for snapshots in range(1, 11):
        for steps in range(1, 201):
            actions = revolve_schedule(steps, snapshots)
            advances = sum(kind == "advance" for kind, _ in actions)
            assert advances == optimal_recomputations(steps, snapshots), (steps, snapshots)
            taped = sorted(i for kind, i in actions if kind == "tape")
            assert taped == list(range(steps))


def test_binomial_formula_small_cases():
    # one snapshot: reverse step l from scratch each time, l (l - 1) / 2 advances
    assert [optimal_recomputations(n, 1) for n in range(1, 6)] == [0, 1, 3, 6, 10]
    # enough snapshots for every state: each step is advanced once
    assert optimal_recomputations(10, 9) == 9
    assert optimal_recomputations(10, 50) == 9


@pytest.mark.parametrize("steps,snapshots", [(1, 1), (2, 1), (7, 2), (12, 3), (20, 4)])
def test_real_chain_layer_calls_match_schedule(steps, snapshots):
    weights, biases = _mlp(steps, 3)
    x = gg.dlarray(np.ones((2, 3)))
    calls = []

    def loss(ws, bs, x):
        layers = _layers(ws, bs, calls)
        y = gg.checkpoint_sequential(layers, x, snapshots=snapshots)
        return gg.dlgradient(gg.sum(y), ws, bs, x)

    got = gg.dlfeval(loss, weights, biases, x)
    stats = gg.checkpoint_sequential.last_stats
    assert len(calls) == steps + optimal_recomputations(steps, snapshots)
    assert stats.recomputations == optimal_recomputations(steps, snapshots)

    def plain_loss(ws, bs, x):
        return gg.dlgradient(gg.sum(_plain(_layers(ws, bs), x)), ws, bs, x)

    _close(gg.dlfeval(plain_loss, weights, biases, x), got)


def test_discarding_activations_layer():
    if not hasattr(gg, "nn") or not hasattr(gg.nn, "Dense"):
        pytest.skip("gg.nn not available yet")
    gg.random.seed(0)
    dense = gg.nn.Dense(4, 3)
    wrapped = dense.discarding_activations()
    assert set(wrapped.parameters()) == set(dense.parameters())
    x = gg.dlarray(np.random.default_rng(0).normal(size=(2, 4)))

    def loss(model, x):
        return gg.dlgradient(gg.sum(gg.tanh(model(x))), model)

    want = gg.dlfeval(loss, dense, x)
    got = gg.dlfeval(loss, wrapped, x)
    assert set(got) == set(want)
    _close(want, got)


@pytest.mark.parametrize("options", [{"segments": 2}, {"snapshots": 2}])
def test_second_order_through_checkpoint_sequential(options):
    weights, biases = _mlp(5, 3)
    x = gg.dlarray(np.random.default_rng(4).normal(size=(2, 3)))

    def loss(ws, bs, x, use):
        layers = _layers(ws, bs)
        y = gg.checkpoint_sequential(layers, x, **options) if use else _plain(layers, x)
        g = gg.dlgradient(gg.sum(y**2), x, enable_higher_derivatives=True)
        return gg.dlgradient(gg.sum(g**2), ws, bs, x)

    _close(
        gg.dlfeval(loss, weights, biases, x, False),
        gg.dlfeval(loss, weights, biases, x, True),
        tol=1e-11,
    )


def test_discarding_activations_in_sequential_model():
    if not hasattr(gg, "nn") or not hasattr(gg.nn, "Sequential"):
        pytest.skip("gg.nn not available yet")
    gg.random.seed(1)
    first, second = gg.nn.Dense(4, 5, activation=gg.tanh), gg.nn.Dense(5, 2)
    plain = gg.nn.Sequential(first, second)
    wrapped = gg.nn.Sequential(first.discarding_activations(), second)
    assert wrapped.parameters().keys() == plain.parameters().keys()
    x = gg.dlarray(np.random.default_rng(5).normal(size=(3, 4)))

    def loss(model, x):
        return gg.dlgradient(gg.sum(model(x) ** 2), model, x)

    want = gg.dlfeval(loss, plain, x)
    got = gg.dlfeval(loss, wrapped, x)
    _close(want, got)
    chained = gg.dlfeval(
        lambda m, x: gg.dlgradient(gg.sum(gg.checkpoint_sequential(m, x, segments=2) ** 2), m, x),
        plain,
        x,
    )
    _close(want, chained)

"""gg.dlaccelerate: replays equal eager execution (bitwise on cpu), the cache counts
hits, misses and evictions, and every guard turns a would-be stale replay into an
eager call or a new trace."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.ops import REGISTRY
from gpugrad.ops import core as _core
from tests.test_gradients import CASES

R = np.random.default_rng(11)


def rnd(*shape):
    return R.standard_normal(shape)


def _leaves(obj):
    out = []

    def visit(x):
        if isinstance(x, gg.dlarray):
            out.append(x.numpy())
        elif isinstance(x, (tuple, list)):
            for o in x:
                visit(o)
        elif isinstance(x, dict):
            for o in x.values():
                visit(o)
        elif isinstance(x, (float, int, np.ndarray)):
            out.append(np.asarray(x))

    visit(obj)
    return out


def assert_same(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


SEEN = set()  # names of the primitives a replayed trace called


def _note_coverage(acc):
    for entry in acc._cache.values():
        SEEN.update(getattr(entry, "primitives", ()))


def _scalar(y):
    ys = y if isinstance(y, tuple) else (y,)
    total = 0
    for v in ys:
        total = total + gg.sum(gg.real(v * gg.conj(v)))
    return total


def _body(fn, order):
    def body(*xs):
        y = fn(*xs)
        s = _scalar(y)
        g = gg.dlgradient(s, *xs, enable_higher_derivatives=order == 2)
        if order == 1:
            return y, g
        gs = g if isinstance(g, tuple) else (g,)
        h = gg.dlgradient(_scalar(gs), *xs)
        return y, g, h

    return body


def _perturbed(args, k):
    rng = np.random.default_rng(100 + k)
    out = []
    for a in args:
        a = np.asarray(a)
        out.append(a * rng.uniform(0.8, 1.2, a.shape) if a.dtype.kind in "fc" else a)
    return out


@pytest.mark.filterwarnings("ignore:.*prod's derivative:RuntimeWarning")
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_equals_eager_for_every_primitive_case(name, order):
    fn, args = CASES[name]
    body = _body(fn, order)
    acc = gg.dlaccelerate(body)
    for k in range(3):  # trace on the first inputs, replay on new ones
        xs = [gg.dlarray(a) for a in _perturbed(args, k)]
        got = gg.dlfeval(acc, *xs)
        want = gg.dlfeval(body, *xs)
        assert_same(got, want)
    if name != "prod_zeros" and name != "prod_two_zeros" and name != "prod":
        assert acc.hits == 2, (acc.hits, acc.misses)
    _note_coverage(acc)


def _nn_cases():
    x4 = rnd(2, 5, 5, 3)
    w = rnd(3, 3, 3, 4)
    xs = rnd(4, 6)
    seq = rnd(2, 3, 4)  # batch, time, features
    lw, lr, lb = rnd(4 * 5, 4), rnd(4 * 5, 5), rnd(4 * 5)
    gw, gr, gb = rnd(3 * 5, 4), rnd(3 * 5, 5), rnd(3 * 5)
    h0 = rnd(5, 2)
    labels = np.array([0, 2, 1, 2])
    return {
        "fullyconnect": (
            lambda x, w, b: gg.fullyconnect(x, w, b, data_format="BC"),
            [xs, rnd(3, 6), rnd(3)],
        ),
        "dlconv": (
            lambda x, w, b: gg.dlconv(x, w, b, padding="same", data_format="BSSC"),
            [x4, w, rnd(4)],
        ),
        "dlconv_stride": (lambda x, w: gg.dlconv(x, w, 0, stride=2, data_format="BSSC"), [x4, w]),
        "dltranspconv": (
            lambda x, w: gg.dltranspconv(x, w, 0, stride=2, data_format="BSSC"),
            [x4[..., :3], rnd(2, 2, 4, 3)],
        ),
        "maxpool": (lambda x: gg.maxpool(x, 2, stride=2, data_format="BSSC"), [x4]),
        "maxpool_overlap": (lambda x: gg.maxpool(x, 3, stride=1, data_format="BSSC"), [x4]),
        "avgpool": (lambda x: gg.avgpool(x, 2, stride=1, data_format="BSSC"), [x4]),
        "softmax": (lambda x: gg.softmax(x, data_format="BC"), [xs]),
        "leakyrelu_gelu": (lambda x: gg.leakyrelu(x, 0.1) + gg.gelu(x), [xs]),
        "batchnorm": (
            lambda x, o, s: gg.batchnorm(x, o, s, data_format="BC"),
            [xs, rnd(6), rnd(6)],
        ),
        "layernorm": (
            lambda x, o, s: gg.layernorm(x, o, s, data_format="BC"),
            [xs, rnd(6), rnd(6)],
        ),
        "lstm": (
            lambda x, w, r, b: gg.lstm(
                gg.dlarray(x, "BTC"),
                gg.dlarray(np.zeros((5, 2)), "CB"),
                gg.dlarray(np.zeros((5, 2)), "CB"),
                w,
                r,
                b,
            )[0],
            [seq, lw, lr, lb],
        ),
        "gru": (
            lambda x, h, w, r, b: gg.gru(gg.dlarray(x, "BTC"), gg.dlarray(h, "CB"), w, r, b)[0],
            [seq, h0, gw, gr, gb],
        ),
        "embed": (lambda w: gg.embed(gg.dlarray(np.array([[2, 0, 1]]), "CB"), w), [rnd(2, 3)]),
        "crossentropy": (
            lambda y: gg.crossentropy(
                gg.softmax(y, data_format="CB"),
                np.eye(4)[:, :3] * 0 + np.eye(4, 3),
                data_format="CB",
            ),
            [rnd(4, 3)],
        ),
        "losses": (
            lambda y: (
                gg.mse(y, np.ones((4, 3)), data_format="CB")
                + gg.l1loss(y, np.ones((4, 3)), data_format="CB")
                + gg.huber(y, np.ones((4, 3)), data_format="CB")
            ),
            [rnd(4, 3)],
        ),
        "softmax_cross_entropy": (lambda z: gg.nn.softmax_cross_entropy(z, labels), [rnd(4, 3)]),
        "dense_relu": (
            _layer_fn(gg.nn.Dense(4, 3, activation=gg.relu), "weight"),
            [rnd(5, 4), rnd(3, 4), rnd(3)],
        ),
        "conv_relu": (
            _layer_fn(gg.nn.Conv2D((2, 2, 2, 3), padding="same", activation=gg.relu), "filter"),
            [rnd(2, 4, 4, 2), rnd(2, 2, 2, 3), rnd(3)],
        ),
    }


def _layer_fn(layer, weight_name):
    def f(x, w, b):
        setattr(layer, weight_name, w)
        layer.bias = b
        return layer(x)

    return f


NN_CASES = _nn_cases()


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("name", sorted(NN_CASES))
def test_replay_equals_eager_for_deep_learning_functions(name, order):
    fn, args = NN_CASES[name]
    body = _body(fn, order)
    acc = gg.dlaccelerate(body)
    for k in range(3):
        xs = [gg.dlarray(a) for a in _perturbed(args, k)]
        got = gg.dlfeval(acc, *xs)
        want = gg.dlfeval(body, *xs)
        assert_same(got, want)
    # the *_relu cases store the traced weights in the layer (a closure): the second
    # call sees changed state, a new key; the third replays it
    assert acc.hits >= 1 if name.endswith("_relu") else acc.hits == 2
    _note_coverage(acc)


@pytest.mark.filterwarnings("ignore:.*prod's derivative:RuntimeWarning")
def test_every_registered_primitive_was_replayed():
    # runs after the two tables above (file order); alone it runs them itself
    if any(p.differentiable and n not in SEEN for n, p in REGISTRY.items()):
        for name in sorted(CASES):
            test_replay_equals_eager_for_every_primitive_case(name, 2)
        for name in sorted(NN_CASES):
            test_replay_equals_eager_for_deep_learning_functions(name, 2)
    if any(p.differentiable and n not in SEEN for n, p in REGISTRY.items()):
        from tests import test_accelerate_surface as surface

        for name in sorted(surface.CASES):
            surface.test_replay_on_new_data_equals_eager(name)
    # prod's and cumprod's derivatives branch on the data (zeros), so a trace of them
    # runs eagerly
    missing = sorted(
        n
        for n, p in REGISTRY.items()
        if p.differentiable
        and n not in SEEN
        and n not in ("prod", "cumprod")
        # the collectives (registered once gpugrad.distributed is imported) are checked
        # on two ranks in tests/test_distributed.py
        and n not in ("all_reduce", "all_reduce_extremum")
    )
    assert not missing, f"primitives never replayed by gg.dlaccelerate's tests: {missing}"


# ------------------------------------------------------------------ cache behaviour


def _rosen(x):
    y = 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    return y, gg.dlgradient(y, x)


def test_hits_misses_eviction_and_clear_cache():
    acc = gg.dlaccelerate(_rosen)
    for v in ([1.0, 2.0], [3.0, 4.0], [0.5, 0.5]):
        gg.dlfeval(acc, gg.dlarray(v))
    assert (acc.hits, acc.misses, acc.traces) == (2, 1, 1)
    assert acc.HitRate == pytest.approx(200 / 3)
    assert acc.Occupancy == pytest.approx(2.0)
    gg.dlfeval(acc, gg.dlarray([1.0, 2.0, 3.0]))  # new shape
    gg.dlfeval(acc, gg.dlarray(np.array([1.0, 2.0], np.float32)))  # new dtype
    gg.dlfeval(acc, gg.dlarray([[1.0], [2.0]], "CB"))  # new format
    assert acc.traces == 4 and len(acc._cache) == 4
    acc.CacheSize = 2
    assert len(acc._cache) == 2 and acc.evictions == 2
    gg.dlfeval(acc, gg.dlarray([1.0, 2.0]))  # evicted long ago: traced again
    assert acc.traces == 5 and acc.evictions == 3
    acc.clearCache()
    assert len(acc._cache) == 0 and acc.HitRate == 0 and acc.Occupancy == 0
    with pytest.raises(ValueError, match="CacheSize"):
        acc.CacheSize = 0
    with pytest.raises(ValueError, match="CheckMode"):
        acc.CheckMode = "strict"


def test_a_scalar_loss_seeds_its_replay_with_a_numpy_scalar():
    # why: under a trace a scalar result is a 0-d array; seeding the replay with
    # np.ones(()) made every replayed rule 0-d array arithmetic (about 1 us per
    # operation instead of 0.1), half of Rosenbrock's replay time
    acc = gg.dlaccelerate(_rosen)
    for v in ([1.0, 2.0], [3.0, 4.0]):
        y, g = gg.dlfeval(acc, gg.dlarray(v))
    assert acc.hits == 1
    (entry,) = acc._cache.values()
    names = entry.fn.__code__.co_names
    consts = [v for k, v in entry.fn.__globals__.items() if k in names]
    assert not [c for c in consts if isinstance(c, np.ndarray) and c.ndim == 0]
    eager = gg.dlfeval(_rosen, gg.dlarray([3.0, 4.0]))
    assert float(y) == float(eager[0]) and np.array_equal(g.numpy(), eager[1].numpy())
    assert type(g.numpy()) is np.ndarray


def test_python_scalars_are_keyed_by_value_and_disabled_runs_eagerly():
    acc = gg.accelerate(lambda x, p: gg.sum(x**p))
    x = gg.dlarray([1.0, 2.0])
    assert float(acc(x, 2)) == 5.0 and float(acc(x, 3)) == 9.0 and float(acc(x, 2)) == 5.0
    assert acc.traces == 2 and acc.hits == 1
    acc.Enabled = False
    assert float(acc(x, 4)) == 17.0 and acc.traces == 2


def test_redefined_code_and_layer_hyperparameters_are_new_keys():
    layer = gg.nn.Dense(3, 2, dtype=np.float64)
    acc = gg.accelerate(lambda x: layer(x))
    x = gg.dlarray(rnd(4, 3))
    acc(x)
    layer.activation = gg.relu
    np.testing.assert_array_equal(acc(x).numpy(), layer(x).numpy())
    assert acc.traces == 2


# ------------------------------------------------------------------ guards


def test_value_escaping_to_python_runs_eagerly_with_a_warning():
    def f(x):
        if float(gg.sum(x)) > 0:
            return x * 2
        return x * -3

    acc = gg.accelerate(f)
    with pytest.warns(RuntimeWarning, match=r"float\(x\) at .*test_accelerate.py"):
        assert acc(gg.dlarray([1.0, 2.0])).numpy().tolist() == [2.0, 4.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes once
        assert acc(gg.dlarray([-1.0, -2.0])).numpy().tolist() == [3.0, 6.0]
    assert acc.hits == 0 and acc.eager_calls == 1


@pytest.mark.parametrize(
    "leak",
    [
        lambda y: y.item(),
        lambda y: bool(y > 0),
        lambda y: np.asarray(y).sum(),
        lambda y: gg.extractdata(y).sum(),
        lambda y: y.numpy().sum(),
    ],
)
def test_every_escape_route_is_caught(leak):
    def f(x):
        y = gg.sum(x)
        return x * float(leak(y))

    acc = gg.accelerate(f)
    with pytest.warns(RuntimeWarning, match="eagerly"):
        acc(gg.dlarray([1.0, 2.0]))
    got = acc(gg.dlarray([3.0, 4.0])).numpy()
    np.testing.assert_array_equal(got, f(gg.dlarray([3.0, 4.0])).numpy())


def test_constants_may_be_read_without_escaping():
    scale = gg.dlarray(3.0)
    acc = gg.accelerate(lambda x: x * float(gg.dlarray(2.0)) + scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc(gg.dlarray([1.0]))
        assert acc(gg.dlarray([2.0])).numpy().tolist() == [7.0]
    assert acc.hits == 1


def test_random_draws_are_fresh_and_match_eager_with_the_same_seed():
    def f(x):
        return x + gg.random.normal(shape=x.shape) + gg.dropout(x, 0.5)

    acc = gg.accelerate(f)
    x = gg.dlarray(np.ones(6))
    with gg.autograd.train_mode():
        gg.random.seed(3)
        got = [acc(x).numpy() for _ in range(3)]
        gg.random.seed(3)
        want = [f(x).numpy() for _ in range(3)]
    assert acc.hits == 2
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[1], got[2])


def test_training_mode_is_part_of_the_key():
    acc = gg.accelerate(lambda x: gg.dropout(x, 0.5))
    x = gg.dlarray(np.ones(100))
    assert np.array_equal(acc(x).numpy(), np.ones(100))
    with gg.autograd.train_mode():
        assert not np.array_equal(acc(x).numpy(), np.ones(100))
    assert acc.traces == 2


def test_global_and_closure_state_updated_between_calls():
    state = {"w": gg.dlarray([1.0, 2.0])}
    power = 2

    def f(x):
        return gg.sum(x * state["w"]) ** power

    acc = gg.accelerate(f)
    x = gg.dlarray([1.0, 1.0])
    assert float(acc(x)) == 9.0
    state["w"] = gg.dlarray([2.0, 2.0])  # a new array in a closure container
    assert float(acc(x)) == 16.0
    state["w"]._data[...] = 3.0  # updated in place
    assert float(acc(x)) == 36.0
    power = 3  # a closure scalar: part of the key  # noqa: F841
    assert float(acc(x)) == 216.0
    global GLOBAL_SHIFT
    GLOBAL_SHIFT = 1.0
    g = gg.accelerate(_uses_global)
    assert float(g(x)) == 3.0
    GLOBAL_SHIFT = 5.0
    assert float(g(x)) == 7.0


GLOBAL_SHIFT = 1.0


def _uses_global(x):
    return gg.sum(x) + GLOBAL_SHIFT


def test_captured_array_with_a_new_shape_is_traced_again():
    holder = type("Holder", (), {})()
    holder.w = gg.dlarray([1.0, 2.0])

    def f(x):
        return gg.sum(x) * gg.sum(holder.w)

    acc = gg.accelerate(f)
    x = gg.dlarray([1.0])
    assert float(acc(x)) == 3.0
    holder.w._data = gg.dlarray([1.0, 2.0, 3.0])._data  # same object, new shape (any device)
    assert float(acc(x)) == 6.0
    assert acc.traces == 2


def test_device_switch_clears_the_cache(monkeypatch):
    acc = gg.accelerate(lambda x: x * 2)
    acc(gg.dlarray([1.0]))
    assert len(acc._cache) == 1
    monkeypatch.setitem(gg.backend._state, "device", "emu")  # what set_device changes
    acc(gg.dlarray([1.0]))
    assert acc.traces == 2 and len(acc._cache) == 1


def test_raw_code_on_traced_data_runs_eagerly():
    def f(x):  # raw array code on the data, outside the primitives: the taint guard sees
        return x + _core.make(x._data * 2)  # it (on the cuda path: the provenance guard)

    acc = gg.accelerate(f)
    with pytest.warns(RuntimeWarning, match="computed from traced data|unknown provenance"):
        acc(gg.dlarray([1.0]))
    assert acc(gg.dlarray([5.0])).numpy().tolist() == [15.0]
    assert acc(gg.dlarray([7.0])).numpy().tolist() == [21.0]
    assert acc.hits == 0


def test_first_replay_check_catches_unrecorded_raw_code():
    xp = gg.backend.xp()

    def f(x):  # a round trip through the host drops the taint: only the first-replay
        # check can see this (cuda-sim sees the device-to-host read while tracing)
        return x + _core.make(xp.asarray(gg.backend.to_host(x._data) * 2))

    acc = gg.accelerate(f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc(gg.dlarray([1.0]))
        got = acc(gg.dlarray([5.0]))
    assert any(
        "first replay differed" in str(w.message) or "device-to-host read" in str(w.message)
        for w in caught
    ), [str(w.message) for w in caught]
    assert got.numpy().tolist() == [15.0]
    assert acc(gg.dlarray([7.0])).numpy().tolist() == [21.0]


def test_check_mode_catches_a_deliberately_wrong_trace():
    acc = gg.dlaccelerate(_rosen)
    gg.dlfeval(acc, gg.dlarray([1.0, 2.0]))
    gg.dlfeval(acc, gg.dlarray([2.0, 2.0]))
    ((key, entry),) = acc._cache.items()
    right = entry.fn
    entry.fn = lambda objs: tuple(v * 1.01 for v in right(objs))
    acc.CheckMode = "tolerance"
    with pytest.warns(RuntimeWarning, match="CheckMode"):
        y, g = gg.dlfeval(acc, gg.dlarray([0.5, 1.5]))
    y0, g0 = gg.dlfeval(_rosen, gg.dlarray([0.5, 1.5]))
    assert float(y) == float(y0)
    np.testing.assert_array_equal(g.numpy(), g0.numpy())


def test_check_mode_on_a_training_step_copies_the_state():
    model = gg.nn.Dense(3, 2, dtype=np.float64)
    opt = gg.optim.SGD(model, learning_rate=0.1)
    ref = gg.nn.Dense(3, 2, dtype=np.float64)
    ref.weight._data[...] = model.weight._data
    ref.bias._data[...] = model.bias._data
    ref_opt = gg.optim.SGD(ref, learning_rate=0.1)

    def loss(m, x):
        y = gg.sum(m(x) ** 2)
        return y, gg.dlgradient(y, m)

    def step(x):
        y, g = gg.dlfeval(loss, model, x)
        opt.update(model, g)
        return y

    acc = gg.accelerate(step)
    acc.CheckMode = "tolerance"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _k in range(4):
            x = gg.dlarray(rnd(5, 3))
            y = acc(x)
            y0, g0 = gg.dlfeval(loss, ref, x)
            ref_opt.update(ref, g0)
            assert float(y) == float(y0)
    np.testing.assert_array_equal(model.weight.numpy(), ref.weight.numpy())
    assert acc.hits == 3


def test_traced_inputs_in_a_recording_caller_run_eagerly():
    acc = gg.accelerate(lambda x: gg.sin(x) * x)

    def outer(x):
        y = gg.sum(acc(x))
        return gg.dlgradient(y, x)

    x = gg.dlarray([0.3, 0.7])
    g = gg.dlfeval(outer, x)
    np.testing.assert_allclose(g.numpy(), np.cos([0.3, 0.7]) * [0.3, 0.7] + np.sin([0.3, 0.7]))
    assert acc.hits == 0 and acc.eager_calls == 1


# ------------------------------------------------------------------ faces and composition


def test_functional_face_gradient_and_value_with_gradient():
    def f(x, y):
        return gg.sum(gg.sin(x) * y)

    acc = gg.accelerate(f)
    vg = gg.value_with_gradient(acc)
    grad = gg.gradient(acc, argnums=0)
    outer = gg.accelerate(gg.value_with_gradient(f))
    for _k in range(3):
        x, y = gg.dlarray(rnd(3)), gg.dlarray(rnd(3))
        want_v, want_g = gg.value_with_gradient(f)(x, y)
        assert_same(vg(x, y), (want_v, want_g))
        assert_same(grad(x, y), want_g[0])
        assert_same(outer(x, y), (want_v, want_g))
    assert vg.hits == 2 and grad.hits == 2 and outer.hits == 2


@pytest.mark.parametrize("grad_req", ["write", "add"])
def test_mxnet_face_record_backward_and_grad(grad_req):
    start = rnd(3)
    w, w0 = gg.dlarray(start), gg.dlarray(start)
    w.attach_grad(grad_req)
    w0.attach_grad(grad_req)

    def step(w, x):
        with gg.autograd.record():
            y = gg.sum(gg.tanh(w * x) ** 2)
        y.backward()
        return y.detach()  # a traced result would make the call eager

    acc = gg.accelerate(step)
    for _k in range(3):
        x = gg.dlarray(rnd(3))
        y, y0 = acc(w, x), step(w0, x)
        assert float(y) == float(y0)
        np.testing.assert_array_equal(w.grad.numpy(), w0.grad.numpy())
    assert acc.hits == 2


def test_higher_derivatives_through_the_accelerated_function():
    def f(x):
        y = gg.sum(gg.exp(x) * x**3)
        g = gg.dlgradient(y, x, enable_higher_derivatives=True)
        return gg.dlgradient(gg.sum(g * g), x)

    acc = gg.dlaccelerate(f)
    for _k in range(3):
        x = gg.dlarray(rnd(4))
        assert_same(gg.dlfeval(acc, x), gg.dlfeval(f, x))
    assert acc.hits == 2


def test_checkpointed_segment_with_dropout_replays_its_recomputation():
    w = gg.dlarray(rnd(4, 4))

    def block(x):
        return gg.dropout(gg.tanh(x @ w), 0.3)

    def f(x):
        y = gg.sum(gg.checkpoint(block, x) ** 2)
        return y, gg.dlgradient(y, x)

    acc = gg.dlaccelerate(f)
    with gg.autograd.train_mode(), pytest.warns(RuntimeWarning, match="checkpointed"):
        for k in range(3):
            x = gg.dlarray(rnd(2, 4))
            gg.random.seed(k)
            got = gg.dlfeval(acc, x)
            gg.random.seed(k)
            want = gg.dlfeval(f, x)
            assert_same(got, want)
    # the recomputation must redraw the first run's mask, which a replay cannot do
    # (it would draw afresh): such a step runs eagerly
    assert acc.hits == 0 and acc.eager_calls == 2


# ------------------------------------------------------------------ whole training loops


def _train(make_model, make_batch, steps, accelerated, optimizer):
    gg.random.seed(0)
    model = make_model()
    opt = optimizer(model)

    def loss_fn(m, x, t):
        loss = gg.nn.softmax_cross_entropy(m(x), t)
        return loss, gg.dlgradient(loss, m)

    def step(x, t):
        with gg.autograd.train_mode():
            loss, grads = gg.dlfeval(loss_fn, model, x, t)
        opt.update(model, grads)
        return loss

    run = gg.accelerate(step) if accelerated else step
    rng = np.random.default_rng(1)
    gg.random.seed(1)
    losses = [float(run(*make_batch(rng))) for _ in range(steps)]
    params = [p.numpy() for p in gg.tree.leaves(model)]
    return losses, params, run


def _cnn():
    return gg.nn.Sequential(
        gg.nn.Conv2D((3, 3, 1, 4), padding="same", activation=gg.relu, dtype=np.float64),
        gg.nn.MaxPool2D(2, 2),
        gg.nn.Conv2D((3, 3, 4, 6), padding="same", activation=gg.relu, dtype=np.float64),
        gg.nn.Flatten(),
        gg.nn.Dropout(0.2),
        gg.nn.Dense(4 * 4 * 6, 10, dtype=np.float64),
    )


def _cnn_batch(rng):
    return gg.dlarray(rng.standard_normal((16, 8, 8, 1))), rng.integers(0, 10, 16)


class _SeqModel(gg.nn.Layer):
    def __init__(self):
        self.lstm = gg.nn.LSTM(3, 8, dtype=np.float64)
        self.head = gg.nn.Dense(8, 4, dtype=np.float64)

    def forward(self, x):
        h = self.lstm(x)
        return self.head(h[:, -1, :])


def _seq_batch(rng):
    return gg.dlarray(rng.standard_normal((8, 5, 3))), rng.integers(0, 4, 8)


@pytest.mark.parametrize(
    "make_model, make_batch",
    [(_cnn, _cnn_batch), (_SeqModel, _seq_batch)],
    ids=["cnn", "lstm"],
)
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda m: gg.optim.Adam(m, learning_rate=1e-2),
        lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9),
    ],
    ids=["adam", "sgd"],
)
def test_training_loop_is_bit_identical_to_eager(make_model, make_batch, optimizer):
    eager_losses, eager_params, _ = _train(make_model, make_batch, 6, False, optimizer)
    losses, params, run = _train(make_model, make_batch, 6, True, optimizer)
    assert losses == eager_losses
    for a, b in zip(params, eager_params):
        np.testing.assert_array_equal(a, b)
    assert run.hits == 5 and run.traces == 1
    assert losses[-1] < losses[0]


def test_matlab_functional_update_returns_the_callers_objects():
    net = gg.nn.Dense(3, 2, dtype=np.float64)
    ref = gg.nn.Dense(3, 2, dtype=np.float64)
    ref.weight._data[...] = net.weight._data
    ref.bias._data[...] = net.bias._data

    def loss(m, x):
        y = gg.sum(m(x) ** 2)
        return y, gg.dlgradient(y, m)

    def step(net, vel, x):
        y, g = gg.dlfeval(loss, net, x)
        net, vel = gg.sgdmupdate(net, g, vel)
        return net, vel, y

    acc = gg.accelerate(step)
    vel = ref_vel = None
    for _ in range(5):
        x = gg.dlarray(rnd(4, 3))
        out, vel, y = acc(net, vel, x)
        assert out is net
        _, ref_vel, y0 = step(ref, ref_vel, x)
        assert float(y) == float(y0)
    np.testing.assert_array_equal(net.weight.numpy(), ref.weight.numpy())
    np.testing.assert_array_equal(vel["weight"].numpy(), ref_vel["weight"].numpy())
    assert acc.traces == 2 and acc.hits == 3  # vel=None first, then a dict of arrays


def test_layers_bound_methods_and_rebound_attributes():
    model = gg.nn.Sequential(
        gg.nn.Dense(3, 4, activation=gg.relu, dtype=np.float64), gg.nn.Dense(4, 2, dtype=np.float64)
    )
    acc = gg.accelerate(model)  # a Layer is callable: its parameters are read live
    for _k in range(3):
        x = gg.dlarray(rnd(5, 3))
        np.testing.assert_array_equal(acc(x).numpy(), model(x).numpy())
    model.layers[0].weight._data[...] = 0.5
    np.testing.assert_array_equal(acc(x).numpy(), model(x).numpy())
    assert acc.traces == 1

    class Net:
        def __init__(self):
            self.w = gg.dlarray([1.0, 2.0])

        @gg.accelerate
        def f(self, x):
            return gg.sum(x * self.w)

    net = Net()
    assert float(net.f(gg.dlarray([1.0, 1.0]))) == 3.0
    assert float(net.f(gg.dlarray([2.0, 1.0]))) == 4.0
    net.w = gg.dlarray([3.0, 3.0])  # rebound: read live
    assert float(net.f(gg.dlarray([1.0, 1.0]))) == 6.0
    net.w = gg.dlarray([3.0, 3.0, 3.0])  # a new shape: a new trace
    assert float(net.f(gg.dlarray([1.0, 1.0, 1.0]))) == 9.0
    assert net.f.traces == 2


EMU_SCRIPT = r"""
import numpy as np, gpugrad as gg
assert gg.device() == "emu"
rng = np.random.default_rng(0)
def f(w, x):
    b = gg.dlarray(np.zeros(4, np.float32))
    y = gg.sum(gg.relu(gg.fullyconnect(x, w, b, data_format="CB")) ** 2)
    return y, gg.dlgradient(y, w)
acc = gg.dlaccelerate(f)
acc.CheckFirstReplay = False
for k in range(3):
    w = gg.dlarray(rng.standard_normal((4, 3)).astype(np.float32))
    x = gg.dlarray(rng.standard_normal((3, 5)).astype(np.float32))
    before = dict(gg.kernels.launches())
    a = gg.dlfeval(acc, w, x)
    launched = {k: v - before.get(k, 0) for k, v in gg.kernels.launches().items()}
    b = gg.dlfeval(f, w, x)
    assert np.array_equal(a[0].numpy(), b[0].numpy()), k
    assert np.array_equal(a[1].numpy(), b[1].numpy()), k
    assert launched.get("relu_fwd_f32") == 1 and launched.get("relu_bwd_f32") == 1, launched
assert acc.hits == 2
print("ok")
"""


def test_replays_launch_the_kernels_on_the_emu_device():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, GPUGRAD_DEVICE="emu", PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", EMU_SCRIPT],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_replays_keep_nothing_alive_and_threads_do_not_share_a_trace():
    import gc
    import threading

    from gpugrad import tape

    acc = gg.dlaccelerate(_rosen)
    x = gg.dlarray([0.3, 0.4])
    for _ in range(3):
        gg.dlfeval(acc, x)
    gc.collect()
    nodes = sum(type(o) is tape.Node for o in gc.get_objects())
    saved = gg.memory.saved_bytes()
    for _ in range(2000):
        gg.dlfeval(acc, x)
    gc.collect()
    assert sum(type(o) is tape.Node for o in gc.get_objects()) <= nodes
    assert gg.memory.saved_bytes() == saved

    results = {}

    def work(i):
        f = gg.dlaccelerate(lambda v: gg.sum(gg.exp(v) * i))
        results[i] = [float(f(gg.dlarray([0.0, 1.0]))) for _ in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in (1.0, 2.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, values in results.items():
        assert values == [pytest.approx(i * (1 + np.e))] * 50

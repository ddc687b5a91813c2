"""Training or inference for Dropout and BatchNorm, in every face: MATLAB's
forward/predict, Swift's learning_phase, MXNet's record(train_mode), PyTorch's
train()/eval(), and the default (train under a gradient, infer otherwise). The
functional gg.batchnorm / gg.dropout agree with the layers."""

import threading

import numpy as np
import pytest

import gpugrad as gg

R = np.random.default_rng(12)
X = R.standard_normal((16, 3)) * 2 + 5
RATE = 0.5


def _bn():
    return gg.nn.BatchNorm(3, dtype=np.float64)


def _batch_normalized(x, eps=1e-5):
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def _running_normalized(x, mean, var, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps)


def _h(a):
    """A raw array (BatchNorm's running statistics) on the host, whatever the device."""
    return gg.backend.to_host(a)


def _trained(bn):
    """Whether bn's last run trained: it moved the running statistics."""
    return not np.allclose(_h(bn.running_mean), 0)


def _drops(fn):
    y = fn(gg.ones((400,))).numpy()
    assert set(np.unique(y)) <= {0.0, 1.0 / (1 - RATE), 1.0}
    return bool((y == 0).any())


# ------------------------------------------------------------------ the default


def test_default_outside_a_gradient_infers():
    bn = _bn()
    y = bn(gg.dlarray(X)).numpy()
    np.testing.assert_allclose(y, _running_normalized(X, 0, 1))
    assert not _trained(bn)
    assert not _drops(gg.nn.Dropout(RATE))
    assert not gg.autograd.is_training()


@pytest.mark.parametrize("face", ["dlfeval", "gradient", "value_with_pullback", "record"])
def test_default_under_a_gradient_trains_in_every_face(face):
    """Differentiating a loss of a net whose mode was never chosen uses the batch
    statistics (the gradient is that of batch normalization), never the running ones."""
    bn = _bn()
    x = gg.dlarray(X)

    def loss(m):
        return gg.sum(m(x) ** 3 * gg.dlarray(np.arange(1.0, 4.0)))

    if face == "dlfeval":
        g = gg.dlfeval(lambda m: gg.dlgradient(loss(m), m), bn)
    elif face == "gradient":
        g = gg.gradient(loss)(bn)
    elif face == "value_with_pullback":
        _, pb = gg.value_with_pullback(loss, bn)
        g = pb(gg.dlarray(1.0))
    else:
        bn.attach_grad()
        with gg.autograd.record():
            out = loss(bn)
        out.backward()
        g = bn.grad
    assert _trained(bn)
    np.testing.assert_allclose(_h(bn.running_mean), 0.1 * X.mean(0), rtol=1e-12)
    # reference: the functional batchnorm with batch statistics, explicitly
    ref = gg.gradient(
        lambda off, sc: gg.sum(
            gg.batchnorm(x, off, sc, training=True, data_format="BC") ** 3
            * gg.dlarray(np.arange(1.0, 4.0))
        )
    )(gg.zeros(3, dtype=np.float64), gg.ones(3, dtype=np.float64))
    np.testing.assert_allclose(g["offset"].numpy(), ref[0].numpy(), rtol=1e-10)
    np.testing.assert_allclose(g["scale"].numpy(), ref[1].numpy(), rtol=1e-10)


def test_default_dropout_drops_under_a_gradient():
    drop = gg.nn.Dropout(RATE)
    x = gg.ones((400,))
    gg.random.seed(3)
    g = gg.gradient(lambda v: gg.sum(drop(v)))(x).numpy()
    assert (g == 0).any() and (g == 2).any()


# ------------------------------------------------------------------ MATLAB


def test_matlab_forward_trains_and_predict_infers():
    bn = _bn()
    x = gg.dlarray(X)
    np.testing.assert_allclose(bn.forward(x).numpy(), _batch_normalized(X), atol=1e-12)
    np.testing.assert_allclose(_h(bn.running_mean), 0.1 * X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(_h(bn.running_var), 0.9 + 0.1 * X.var(0, ddof=1), rtol=1e-12)
    before = bn.running_mean.copy()
    y = bn.predict(x).numpy()
    np.testing.assert_allclose(y, _running_normalized(X, _h(bn.running_mean), _h(bn.running_var)))
    np.testing.assert_array_equal(_h(bn.running_mean), _h(before))
    drop = gg.nn.Dropout(RATE)
    assert _drops(drop.forward) and not _drops(drop.predict)
    # the functions of the same name
    bn2 = _bn()
    np.testing.assert_allclose(gg.forward(bn2, x).numpy(), _batch_normalized(X), atol=1e-12)
    np.testing.assert_allclose(
        gg.predict(bn2, x).numpy(),
        _running_normalized(X, _h(bn2.running_mean), _h(bn2.running_var)),
    )
    assert _drops(lambda v: gg.forward(drop, v)) and not _drops(lambda v: gg.predict(drop, v))
    # a plain function of layers works too
    net = gg.nn.Sequential(gg.nn.Dense(400, 400), drop)
    assert not _drops(lambda v: gg.predict(lambda u: drop(u), v))
    assert net.predict(gg.ones((2, 400))).shape == (2, 400)


def test_matlab_predict_inside_dlfeval_infers():
    bn = _bn()
    x = gg.dlarray(X)

    def step(m):
        y = gg.sum(m.predict(x))
        return gg.dlgradient(y, m)

    g = gg.dlfeval(step, bn)
    assert not _trained(bn)
    # inference: y = (x - 0)/sqrt(1 + eps) * scale + offset, so d/dscale = sum(x)/sqrt(1+eps)
    np.testing.assert_allclose(g["scale"].numpy(), X.sum(0) / np.sqrt(1 + 1e-5), rtol=1e-12)


def test_predict_of_a_teacher_inside_a_students_forward_infers():
    class Student(gg.nn.Layer):
        def __init__(self):
            self.teacher = gg.nn.Dropout(RATE)
            self.drop = gg.nn.Dropout(RATE)

        def forward(self, x):
            return self.teacher.predict(x), self.drop(x)

    teacher_out, own = Student().forward(gg.ones((400,)))
    assert (teacher_out.numpy() == 1).all() and (own.numpy() == 0).any()


def test_a_layers_own_forward_calls_follow_the_phase_it_runs_in():
    """super().forward(x) or self.sub.forward(h) inside a layer is not a new MATLAB
    forward call: under net.predict(x) or plain inference they still infer."""

    class Net(gg.nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 1.0

    class Outer(gg.nn.Layer):
        def __init__(self):
            self.inner = gg.nn.Dropout(RATE)

        def forward(self, x):
            return self.inner.forward(x)  # PyTorch habit

    for net in (Net(gg.nn.Dropout(RATE)), Outer()):
        assert not _drops(net)  # no gradient, nobody chose: inference
        assert not _drops(net.predict)
        assert _drops(net.forward)


# ------------------------------------------------------------------ Swift


def test_swift_learning_phase():
    bn = _bn()
    x = gg.dlarray(X)
    with gg.learning_phase("training"):
        assert gg.autograd.is_training()
        np.testing.assert_allclose(bn(x).numpy(), _batch_normalized(X), atol=1e-12)
        assert _drops(gg.nn.Dropout(RATE))
    assert _trained(bn)
    bn2 = _bn()
    with gg.learning_phase("inference"):
        assert not gg.autograd.is_training()
        g = gg.gradient(lambda m: gg.sum(m(x)))(bn2)
        assert not _drops(gg.nn.Dropout(RATE))
    assert not _trained(bn2)
    np.testing.assert_allclose(g["scale"].numpy(), X.sum(0) / np.sqrt(1 + 1e-5), rtol=1e-12)
    with pytest.raises(ValueError, match="learning_phase: phase must be 'training' or"):
        gg.learning_phase("train mode")


# ------------------------------------------------------------------ MXNet


def test_mxnet_record_train_mode():
    drop = gg.nn.Dropout(RATE)
    with gg.autograd.record():
        assert gg.autograd.is_training() and _drops(drop)
        with gg.autograd.predict_mode():
            assert not _drops(drop)
        with gg.autograd.pause():
            assert not _drops(drop)
    with gg.autograd.record(train_mode=False):
        assert not gg.autograd.is_training() and not _drops(drop)
    with gg.autograd.train_mode():
        assert _drops(drop)


def test_set_training_and_set_recording_follow_mxnet():
    def body():
        assert gg.autograd.set_recording(True) is False
        assert not gg.autograd.is_training()  # recording alone does not train (MXNet)
        assert gg.autograd.set_training(True) is False
        ok = _drops(gg.nn.Dropout(RATE))
        gg.autograd.set_recording(False)
        return ok

    out = []
    t = threading.Thread(target=lambda: out.append(body()))
    t.start()
    t.join()
    assert out == [True]


# ------------------------------------------------------------------ PyTorch habits


def test_pytorch_train_and_eval():
    x = gg.dlarray(X)
    net = gg.nn.Sequential(_bn(), gg.nn.Dropout(RATE))
    assert net.eval() is net
    assert net.training is False and net[0].training is False
    g = gg.gradient(lambda m: gg.sum(m(x)))(net)  # eval wins over the gradient default
    assert not _trained(net[0])
    np.testing.assert_allclose(g["0"]["scale"].numpy(), X.sum(0) / np.sqrt(1 + 1e-5))
    with gg.autograd.record():  # and over record()'s train_mode
        assert not _drops(net[1])
    assert _drops(net[1].forward)  # MATLAB's forward is an explicit training call
    net.train()
    assert net.training and _drops(net[1])  # train wins outside a gradient
    with gg.learning_phase("inference"):
        assert _drops(net[1])
    assert not _drops(net[1].predict)  # predict is explicit inference
    net.train(None)
    assert not _drops(net[1]) and net[1].training is False
    with pytest.raises(TypeError, match="train: mode must be True, False or None"):
        net.train("yes")


def test_eval_mode_survives_dlfeval_copies():
    net = gg.nn.Sequential(gg.nn.Dense(3, 3, dtype=np.float64), _bn()).eval()
    x = gg.dlarray(X)
    gg.dlfeval(lambda m: gg.dlgradient(gg.sum(m(x)), m), net)
    assert not _trained(net[1])


# ------------------------------------------------------------------ functional = layer


@pytest.mark.parametrize("training", [True, False])
def test_functional_batchnorm_agrees_with_the_layer(training):
    bn = _bn()
    bn.running_mean[:] = [1.0, -2.0, 0.5]
    bn.running_var[:] = [2.0, 0.5, 3.0]
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    x = gg.dlarray(X)
    with gg.learning_phase(training):
        y_layer = bn(x).numpy()
        out = gg.batchnorm(x, bn.offset, bn.scale, gg.dlarray(rm), gg.dlarray(rv), data_format="BC")
    if training:
        y_fn, new_mean, new_var = out
        np.testing.assert_allclose(new_mean.numpy(), _h(bn.running_mean), rtol=1e-12)
        np.testing.assert_allclose(new_var.numpy(), _h(bn.running_var), rtol=1e-12)
    else:
        y_fn = out
        np.testing.assert_array_equal(_h(bn.running_mean), _h(rm))
    np.testing.assert_allclose(y_fn.numpy(), y_layer, rtol=1e-12)


def test_functional_default_agrees_with_the_layer_under_a_gradient():
    x = gg.dlarray(X)
    rm, rv = gg.zeros(3, dtype=np.float64), gg.ones(3, dtype=np.float64)

    def f(off):
        out = gg.batchnorm(x, off, gg.ones(3, dtype=np.float64), rm, rv, data_format="BC")
        assert isinstance(out, tuple)  # training: (y, new_mean, new_var)
        return gg.sum(out[0] ** 2)

    gg.gradient(f)(gg.zeros(3, dtype=np.float64))
    assert gg.dropout(gg.ones((400,)), RATE).numpy().min() == 1  # outside: identity


# ------------------------------------------------------------------ checkpointing


def test_checkpoint_recomputes_in_the_phase_of_the_first_run():
    """A layer whose activations are recomputed sees the same phase in the pullback
    (here net.eval() under a gradient, and a forward call), so the gradient is right."""
    gg.random.seed(1)
    x = gg.dlarray(R.standard_normal((8, 3)))

    def net_with(discard):
        gg.random.seed(2)
        inner = gg.nn.Sequential(gg.nn.Dense(3, 3, dtype=np.float64), gg.nn.Dropout(RATE))
        return inner.discarding_activations() if discard else inner

    for run in (lambda m, v: m(v), lambda m, v: m.forward(v)):
        grads = []
        for discard in (False, True):
            net = net_with(discard)
            gg.random.seed(5)
            grads.append(gg.gradient(lambda m, run=run: gg.sum(run(m, x) ** 2))(net))
        for a, b in zip(gg.tree.leaves(grads[0]), gg.tree.leaves(grads[1])):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)

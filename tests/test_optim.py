"""gg.optim.SGD / gg.optim.Adam and MATLAB's gg.sgdmupdate / gg.adamupdate:
trajectories against torch.optim in float64, MATLAB's formulas and defaults, updates
in place (same dlarray objects, same buffers), and clear errors for bad arguments
and gradients that are not shaped like the parameters."""

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.tree import leaves
from tests._torch import torch

# float64 layer parameters: these tests compare with float64 references
pytestmark = pytest.mark.usefixtures("float64")

R = np.random.default_rng(21)
X = R.standard_normal((6, 3))
TARGET = R.standard_normal((6, 2))


def _mlp(seed=0):
    gg.random.seed(seed)
    return gg.nn.Sequential(gg.nn.Dense(3, 4, activation=gg.tanh), gg.nn.Dense(4, 2))


def _loss_and_grads(model):
    def f(m):
        loss = gg.mean((m(gg.dlarray(X)) - gg.dlarray(TARGET)) ** 2)
        return loss, gg.dlgradient(loss, m)

    loss, grads = gg.dlfeval(f, model)
    return float(loss), grads


def _torch_twin(model):
    """The same MLP as torch tensors (w1, b1, w2, b2) and its loss function."""
    p = model.parameters()
    names = [("0", "weight"), ("0", "bias"), ("1", "weight"), ("1", "bias")]
    tensors = [torch.tensor(p[a][b].numpy(), requires_grad=True) for a, b in names]
    x, t = torch.tensor(X), torch.tensor(TARGET)

    def loss():
        w1, b1, w2, b2 = tensors
        y = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return ((y - t) ** 2).mean()

    return tensors, loss


def _flat(model):
    return [p.numpy().copy() for p in leaves(model.parameters())]


def _same_order(model):
    p = model.parameters()
    return [p["0"]["weight"], p["0"]["bias"], p["1"]["weight"], p["1"]["bias"]]


def _run_against_torch(make_gg, make_torch, steps=8):
    model = _mlp()
    opt = make_gg(model)
    tensors, torch_loss = _torch_twin(model)
    topt = make_torch(tensors)
    for _ in range(steps):
        loss, grads = _loss_and_grads(model)
        topt.zero_grad()
        tl = torch_loss()
        tl.backward()
        topt.step()
        np.testing.assert_allclose(loss, tl.item(), rtol=1e-12)
        opt(model, grads)
    for mine, ref in zip(_same_order(model), tensors):
        np.testing.assert_allclose(mine.numpy(), ref.detach().numpy(), rtol=0, atol=1e-10)
    return model, tensors, topt


# ------------------------------------------------------------------ against torch.optim


@pytest.mark.parametrize(
    "settings",
    [
        dict(learning_rate=0.1),
        dict(learning_rate=0.1, momentum=0.9),
        dict(learning_rate=0.05, momentum=0.8, nesterov=True),
        dict(learning_rate=0.1, weight_decay=0.05),
        dict(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
    ],
)
def test_sgd_trajectory_matches_torch(settings):
    opt_holder = {}

    def make_gg(model):
        opt_holder["opt"] = gg.optim.SGD(model, **settings)
        return opt_holder["opt"].update

    def make_torch(tensors):
        return torch.optim.SGD(
            tensors,
            lr=settings["learning_rate"],
            momentum=settings.get("momentum", 0.0),
            nesterov=settings.get("nesterov", False),
            weight_decay=settings.get("weight_decay", 0.0),
        )

    model, _, _ = _run_against_torch(make_gg, make_torch)
    assert not np.allclose(_flat(model)[0], _flat(_mlp())[0])  # it did move


@pytest.mark.parametrize(
    "settings",
    [
        dict(learning_rate=0.01),
        dict(learning_rate=0.02, beta1=0.8, beta2=0.99, weight_decay=0.01),
    ],
)
def test_adam_trajectory_matches_torch(settings):
    # why epsilon 1e-14: torch adds eps to sqrt(v_hat) after the bias correction, S4TF
    # and MATLAB add it to sqrt(v) before (see test_adam_follows_matlab_formula); with a
    # negligible epsilon the two forms agree, so everything else is compared exactly
    def make_gg(model):
        return gg.optim.Adam(model, epsilon=1e-14, **settings).update

    def make_torch(tensors):
        return torch.optim.Adam(
            tensors,
            lr=settings["learning_rate"],
            betas=(settings.get("beta1", 0.9), settings.get("beta2", 0.999)),
            eps=1e-14,
            weight_decay=settings.get("weight_decay", 0.0),
        )

    _run_against_torch(make_gg, make_torch)


def test_adam_complex_parameters_match_torch():
    p0 = R.standard_normal(4) + 1j * R.standard_normal(4)
    grads = [R.standard_normal(4) + 1j * R.standard_normal(4) for _ in range(5)]
    w = gg.dlarray(p0.copy())
    opt = gg.optim.Adam({"w": w}, learning_rate=0.05, epsilon=1e-14)
    m, v = None, None
    w2 = gg.dlarray(p0.copy())
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = torch.optim.Adam([tp], lr=0.05, eps=1e-14)
    for i, g in enumerate(grads, 1):
        opt.update({"w": w}, {"w": gg.dlarray(g)})
        w2, m, v = gg.adamupdate(w2, gg.dlarray(g), m, v, i, 0.05, 0.9, 0.999, 1e-14)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(w.numpy(), tp.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(w2.numpy(), tp.detach().numpy(), rtol=0, atol=1e-10)


def test_sgdmupdate_matches_torch_sgd_with_momentum():
    model = _mlp()
    tensors, torch_loss = _torch_twin(model)
    topt = torch.optim.SGD(tensors, lr=0.05, momentum=0.9)
    vel = None
    for _ in range(6):
        _, grads = _loss_and_grads(model)
        topt.zero_grad()
        torch_loss().backward()
        topt.step()
        model, vel = gg.sgdmupdate(model, grads, vel, 0.05, 0.9)
    for mine, ref in zip(_same_order(model), tensors):
        np.testing.assert_allclose(mine.numpy(), ref.detach().numpy(), rtol=0, atol=1e-10)
    # MATLAB's velocity is torch's momentum buffer times -learn_rate
    mine_vel = [vel["0"]["weight"], vel["0"]["bias"], vel["1"]["weight"], vel["1"]["bias"]]
    for v, t in zip(mine_vel, tensors):
        ref = -0.05 * topt.state[t]["momentum_buffer"].numpy()
        np.testing.assert_allclose(v.numpy(), ref, rtol=0, atol=1e-10)


def test_adamupdate_matches_torch_adam():
    model = _mlp()
    tensors, torch_loss = _torch_twin(model)
    topt = torch.optim.Adam(tensors, lr=0.01, betas=(0.8, 0.99), eps=1e-14)
    avg, avg_sq = [], []  # MATLAB's empty state
    for it in range(1, 7):
        _, grads = _loss_and_grads(model)
        topt.zero_grad()
        torch_loss().backward()
        topt.step()
        model, avg, avg_sq = gg.adamupdate(model, grads, avg, avg_sq, it, 0.01, 0.8, 0.99, 1e-14)
    for mine, ref in zip(_same_order(model), tensors):
        np.testing.assert_allclose(mine.numpy(), ref.detach().numpy(), rtol=0, atol=1e-10)
    for key, tree in [("exp_avg", avg), ("exp_avg_sq", avg_sq)]:
        mine = [tree["0"]["weight"], tree["0"]["bias"], tree["1"]["weight"], tree["1"]["bias"]]
        for a, t in zip(mine, tensors):
            np.testing.assert_allclose(a.numpy(), topt.state[t][key].numpy(), atol=1e-12)


# ------------------------------------------------------------------ MATLAB's formulas and defaults


def _matlab_adam(p, grads, lr, b1, b2, eps):
    """MATLAB's adamupdate (and S4TF's Adam) written out in NumPy."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return p, m, v


@pytest.mark.parametrize("epsilon", [1e-8, 0.1])
def test_adam_follows_matlab_formula(epsilon):
    p0 = R.standard_normal(5)
    grads = [R.standard_normal(5) * 0.3 for _ in range(4)]
    ref, ref_m, ref_v = _matlab_adam(p0, grads, 0.01, 0.9, 0.999, epsilon)
    w = gg.dlarray(p0.copy())
    opt = gg.optim.Adam({"w": w}, learning_rate=0.01, epsilon=epsilon)
    w2, m, v = gg.dlarray(p0.copy()), None, None
    for i, g in enumerate(grads, 1):
        opt.update({"w": w}, {"w": g})
        w2, m, v = gg.adamupdate(w2, gg.dlarray(g), m, v, i, 0.01, 0.9, 0.999, epsilon)
    np.testing.assert_allclose(w.numpy(), ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(w2.numpy(), ref, rtol=0, atol=1e-14)
    np.testing.assert_allclose(m.numpy(), ref_m, atol=1e-15)
    np.testing.assert_allclose(v.numpy(), ref_v, atol=1e-15)


def test_adamupdate_defaults_are_matlabs():
    # MATLAB: learnRate 0.001, gradDecay 0.9, sqGradDecay 0.999, epsilon 1e-8
    p0 = R.standard_normal(3)
    grads = [R.standard_normal(3) for _ in range(3)]
    ref, ref_m, ref_v = _matlab_adam(p0, grads, 0.001, 0.9, 0.999, 1e-8)
    p, m, v = gg.dlarray(p0.copy()), None, None
    for i, g in enumerate(grads, 1):
        p, m, v = gg.adamupdate(p, gg.dlarray(g), m, v, i)
    np.testing.assert_allclose(p.numpy(), ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.numpy(), ref_m, atol=1e-15)
    np.testing.assert_allclose(v.numpy(), ref_v, atol=1e-15)
    # the same call spelled with keywords
    q, m2, v2 = gg.dlarray(p0.copy()), None, None
    for i, g in enumerate(grads, 1):
        q, m2, v2 = gg.adamupdate(
            q,
            grad=gg.dlarray(g),
            average_grad=m2,
            average_sq_grad=v2,
            iteration=i,
            learn_rate=0.001,
            grad_decay=0.9,
            sq_grad_decay=0.999,
            epsilon=1e-8,
        )
    np.testing.assert_array_equal(q.numpy(), p.numpy())


def test_sgdmupdate_formula_and_matlab_defaults():
    # MATLAB: vel = momentum * vel - learnRate * grad; net = net + vel; learnRate 0.01,
    # momentum 0.9 by default; vel = [] on the first call
    p0 = R.standard_normal(4)
    g1, g2 = R.standard_normal(4), R.standard_normal(4)
    p, vel = gg.sgdmupdate({"w": gg.dlarray(p0.copy())}, {"w": gg.dlarray(g1)}, [])
    np.testing.assert_allclose(vel["w"].numpy(), -0.01 * g1)
    np.testing.assert_allclose(p["w"].numpy(), p0 - 0.01 * g1)
    p, vel = gg.sgdmupdate(p, {"w": gg.dlarray(g2)}, vel)
    v2 = 0.9 * (-0.01 * g1) - 0.01 * g2
    np.testing.assert_allclose(vel["w"].numpy(), v2)
    np.testing.assert_allclose(p["w"].numpy(), p0 - 0.01 * g1 + v2)
    # positional learnRate and momentum, and a plain NumPy velocity
    q, vel = gg.sgdmupdate(gg.dlarray(p0.copy()), gg.dlarray(g2), np.ones(4), 0.5, 0.25)
    np.testing.assert_allclose(vel.numpy(), 0.25 - 0.5 * g2)
    np.testing.assert_allclose(q.numpy(), p0 + 0.25 - 0.5 * g2)


def test_functional_updates_take_lists_and_tuples():
    a, b = gg.dlarray(np.ones(2)), gg.dlarray(np.ones(3))
    params = [a, (b,)]
    out, vel = gg.sgdmupdate(params, [np.ones(2), (np.full(3, 2.0),)], None, 0.1, 0.5)
    assert out is params and isinstance(vel, list) and isinstance(vel[1], tuple)
    np.testing.assert_allclose(b.numpy(), 1 - 0.2)
    out, m, v = gg.adamupdate(params, [np.ones(2), (np.ones(3),)], None, None, 1)
    assert out is params and m[1][0].shape == (3,)


# ------------------------------------------------------------------ in place


def _assert_changed_in_place(model, objects, buffers, before):
    """Every parameter is the same dlarray on the same buffer as ``objects``/``buffers``,
    and every value moved away from ``before``."""
    after = leaves(model.parameters())
    assert all(a is b for a, b in zip(after, objects))
    assert all(p._data is buf for p, buf in zip(after, buffers))
    assert all(not np.allclose(b, p.numpy()) for b, p in zip(before, after))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: gg.optim.SGD(m, learning_rate=0.1),
        lambda m: gg.optim.SGD(m, learning_rate=0.1, momentum=0.9, nesterov=True),
        lambda m: gg.optim.Adam(m, learning_rate=0.1, weight_decay=0.1),
    ],
)
def test_optimizers_update_in_place(make_opt):
    model = _mlp()
    first = model.layers[0].weight
    objects = leaves(model.parameters())
    buffers = [p._data for p in objects]
    before = _flat(model)
    opt = make_opt(model)
    for _ in range(2):
        opt.update(model, _loss_and_grads(model)[1])
    assert model.layers[0].weight is first
    _assert_changed_in_place(model, objects, buffers, before)
    # a dict of dlarrays works as the model too
    w = gg.dlarray(np.ones(3))
    buf = w._data
    opt = make_opt({"w": w})
    opt.update({"w": w}, {"w": np.ones(3)})
    assert w._data is buf and (w.numpy() < 1).all()


def test_functional_updates_work_in_place():
    model = _mlp()
    objects = leaves(model.parameters())
    buffers = [p._data for p in objects]
    before = _flat(model)
    out, vel = gg.sgdmupdate(model, _loss_and_grads(model)[1], None)
    assert out is model
    out, vel2 = gg.sgdmupdate(model, _loss_and_grads(model)[1], vel)
    assert all(a is b for a, b in zip(leaves(vel2), leaves(vel)))  # state reused too
    out, m, v = gg.adamupdate(model, _loss_and_grads(model)[1], None, None, 1)
    out, m2, v2 = gg.adamupdate(model, _loss_and_grads(model)[1], m, v, 2)
    assert out is model
    assert all(a is b for a, b in zip(leaves(m2) + leaves(v2), leaves(m) + leaves(v)))
    _assert_changed_in_place(model, objects, buffers, before)
    w = gg.dlarray(np.ones(2))
    buf = w._data
    out, _ = gg.sgdmupdate(w, gg.dlarray(np.ones(2)), None)
    assert out is w and w._data is buf
    np.testing.assert_allclose(w.numpy(), 0.99)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: gg.optim.SGD(m, learning_rate=0.1),
        lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9),
        lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda m: gg.optim.Adam(m, learning_rate=0.02),
    ],
)
def test_optimizers_decrease_the_loss(make_opt):
    gg.random.seed(0)
    model = gg.nn.Sequential(gg.nn.Dense(2, 8, activation=gg.relu), gg.nn.Dense(8, 1))
    x = gg.dlarray(R.standard_normal((32, 2)))
    target = gg.dlarray(np.sin(x.numpy().sum(1, keepdims=True)))
    opt = make_opt(model)

    def f(m):
        loss = gg.mean((m(x) - target) ** 2)
        return loss, gg.dlgradient(loss, m)

    first = None
    for _ in range(60):
        loss, grads = gg.dlfeval(f, model)
        first = float(loss) if first is None else first
        opt.update(model, grads)
    assert float(loss) < 0.5 * first


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: gg.optim.SGD(m, learning_rate=0), r"SGD: learning_rate must be > 0, got 0"),
        (lambda m: gg.optim.SGD(m, learning_rate=-0.1), r"learning_rate must be > 0"),
        (lambda m: gg.optim.SGD(m, learning_rate=float("nan")), r"learning_rate must be a finite"),
        (lambda m: gg.optim.SGD(m, learning_rate="0.1"), r"learning_rate must be a finite"),
        (lambda m: gg.optim.SGD(m, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (lambda m: gg.optim.SGD(m, momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (lambda m: gg.optim.SGD(m, nesterov=True), r"nesterov=True needs a momentum"),
        (lambda m: gg.optim.SGD(m, weight_decay=-1), r"weight_decay must be >= 0"),
        (lambda m: gg.optim.Adam(m, learning_rate=0), r"Adam: learning_rate must be > 0"),
        (lambda m: gg.optim.Adam(m, beta1=1.0), r"Adam: beta1 must be in \[0, 1\)"),
        (lambda m: gg.optim.Adam(m, beta2=-0.5), r"Adam: beta2 must be in \[0, 1\)"),
        (lambda m: gg.optim.Adam(m, epsilon=0), r"Adam: epsilon must be > 0"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make(_mlp())


def test_hyperparameters_are_checked_when_set_later():
    opt = gg.optim.Adam(_mlp())
    opt.learning_rate = 0.5  # a schedule may change it
    assert opt.learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -1"):
        opt.learning_rate = -1
    sgd = gg.optim.SGD(_mlp(), momentum=0.5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        sgd.momentum = 1.5


def test_model_argument_is_checked():
    with pytest.raises(TypeError, match="model must be a gg.nn.Layer.*got float"):
        gg.optim.SGD(0.1)  # the learning rate passed where the model goes
    with pytest.raises(TypeError, match="SGD.update: model must be"):
        gg.optim.SGD(None).update("model", {})


def _bad_grads_cases(grads):
    g0, g1 = grads["0"], grads["1"]
    return [
        ({"0": g0, "1": {"weight": g1["weight"]}}, r"grads\['1'\] is missing key\(s\) \['bias'\]"),
        (
            {"0": g0, "1": dict(g1, extra=g1["bias"])},
            r"grads\['1'\] has unexpected key\(s\) \['extra'\]",
        ),
        ({"0": g0}, r"grads is missing key\(s\) \['1'\]"),
        (
            {"0": g0, "1": {"weight": g1["weight"], "bias": np.zeros(3)}},
            r"grads\['1'\]\['bias'\] has shape \(3,\), but the parameter has shape \(2,\)",
        ),
        (
            {"0": g0, "1": {"weight": None, "bias": g1["bias"]}},
            r"grads\['1'\]\['weight'\] is None; expected an array of shape \(2, 4\)",
        ),
        ([g0, g1], r"grads must be a dict with keys \['0', '1'\].*got list"),
        ({"0": g0, "1": g1["bias"]}, r"grads\['1'\] must be a dict with keys \['bias', 'weight'\]"),
        (
            {"0": g0, "1": {"weight": g1["weight"] * 1j, "bias": g1["bias"]}},
            r"grads\['1'\]\['weight'\] is complex.*parameter is real",
        ),
    ]


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_update_rejects_grads_not_shaped_like_parameters(kind):
    model = _mlp()
    _, grads = _loss_and_grads(model)
    opt = gg.optim.SGD(model, 0.1, 0.9) if kind == "sgd" else gg.optim.Adam(model)
    before = _flat(model)
    for bad, match in _bad_grads_cases(grads):
        with pytest.raises(ValueError, match=match):
            opt.update(model, bad)
    # nothing was applied, not even to the layers before the bad entry
    for b, p in zip(before, _flat(model)):
        np.testing.assert_array_equal(b, p)
    if kind == "adam":
        assert opt.step == 0
    opt.update(model, grads)  # and the optimizer still works
    assert not np.allclose(before[0], _flat(model)[0])


def test_one_optimizer_per_model():
    opt = gg.optim.Adam(learning_rate=0.1)
    small, big = gg.nn.Dense(2, 3), gg.nn.Dense(4, 3)
    opt.update(small, {"weight": np.ones((3, 2)), "bias": np.ones(3)})
    with pytest.raises(ValueError, match=r"state for it has shape \(3, 2\); use one optimizer"):
        opt.update(big, {"weight": np.ones((3, 4)), "bias": np.ones(3)})


def test_functional_update_errors():
    model = _mlp()
    _, grads = _loss_and_grads(model)
    for bad, match in _bad_grads_cases(grads):
        with pytest.raises(ValueError, match="sgdmupdate: " + match.replace("grads", "grad")):
            gg.sgdmupdate(model, bad, None)
        with pytest.raises(ValueError, match="adamupdate: " + match.replace("grads", "grad")):
            gg.adamupdate(model, bad, None, None, 1)
    _, vel = gg.sgdmupdate(model, grads, None)
    with pytest.raises(ValueError, match=r"sgdmupdate: vel\['0'\] is missing key\(s\) \['bias'\]"):
        gg.sgdmupdate(model, grads, {"0": {"weight": vel["0"]["weight"]}, "1": vel["1"]})
    with pytest.raises(ValueError, match=r"average_sq_grad\['1'\]\['bias'\] has shape \(5,\)"):
        gg.adamupdate(model, grads, None, {"0": vel["0"], "1": dict(vel["1"], bias=np.ones(5))}, 2)
    w, g = gg.dlarray(np.ones(2)), gg.dlarray(np.ones(2))
    cases = [
        (lambda: gg.sgdmupdate(w, g, None, 0), r"sgdmupdate: learn_rate must be > 0"),
        (lambda: gg.sgdmupdate(w, g, None, 0.1, 1.0), r"momentum must be in \[0, 1\)"),
        (lambda: gg.adamupdate(w, g, None, None, 0), r"iteration must be a positive integer"),
        (lambda: gg.adamupdate(w, g, None, None, 1.5), r"iteration must be a positive integer"),
        (lambda: gg.adamupdate(w, g, None, None, 1, -1), r"adamupdate: learn_rate must be > 0"),
        (lambda: gg.adamupdate(w, g, None, None, 1, 0.1, 1.0), r"grad_decay must be in \[0, 1\)"),
        (lambda: gg.adamupdate(w, g, None, None, 1, 0.1, 0.9, 1.0), r"sq_grad_decay must be in"),
        (lambda: gg.adamupdate(w, g, None, None, 1, 0.1, 0.9, 0.9, 0), r"epsilon must be > 0"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    np.testing.assert_array_equal(w.numpy(), 1.0)  # no failed call touched it
    with pytest.raises(TypeError, match="sgdmupdate: net must be a gg.nn.Layer.*got ndarray"):
        gg.sgdmupdate(np.ones(2), np.ones(2), None)
    with pytest.raises(TypeError, match=r"the parameter at \['w'\] is a ndarray"):
        gg.adamupdate({"w": np.ones(2)}, {"w": np.ones(2)}, None, None, 1)

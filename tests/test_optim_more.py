"""AdamW, RMSProp, learning-rate schedules, gradient clipping and optimizer state
(state_dict / load_state_dict): trajectories against torch.optim in float64,
MATLAB's clipping formulas, and a resumed run equal to an uninterrupted one."""

import math

import numpy as np
import pytest

import gpugrad as gg
from gpugrad.testing import check_gradient
from tests._torch import torch
from tests.test_optim import _flat, _loss_and_grads, _mlp, _run_against_torch

R = np.random.default_rng(31)


@pytest.fixture(autouse=True)
def _float64_parameters():
    """float64 layer parameters: these tests compare with float64 references."""
    set_default = getattr(gg, "set_default_dtype", None)
    if set_default is None:  # parameters are float64 where no default dtype is settable
        yield
        return
    previous = set_default(np.float64)
    yield
    set_default(previous)


# ------------------------------------------------------------------ AdamW, RMSProp


@pytest.mark.parametrize(
    "settings",
    [
        dict(learning_rate=0.01),
        dict(learning_rate=0.02, beta1=0.8, beta2=0.99, weight_decay=0.1),
    ],
)
def test_adamw_trajectory_matches_torch(settings):
    # why epsilon 1e-14: see test_adam_trajectory_matches_torch (epsilon placement)
    def make_gg(model):
        return gg.optim.AdamW(model, epsilon=1e-14, **settings).update

    def make_torch(tensors):
        return torch.optim.AdamW(
            tensors,
            lr=settings["learning_rate"],
            betas=(settings.get("beta1", 0.9), settings.get("beta2", 0.999)),
            eps=1e-14,
            weight_decay=settings.get("weight_decay", 0.01),
        )

    _run_against_torch(make_gg, make_torch)


def test_adamw_without_decay_is_adam_and_decay_is_decoupled():
    a, b = _mlp(), _mlp()
    adam, adamw = gg.optim.Adam(a, 0.01), gg.optim.AdamW(b, 0.01, weight_decay=0.0)
    for _ in range(3):
        adam.update(a, _loss_and_grads(a)[1])
        adamw.update(b, _loss_and_grads(b)[1])
    for x, y in zip(_flat(a), _flat(b)):
        np.testing.assert_array_equal(x, y)
    # decoupled: the decay does not enter the moments (L2-regularized Adam's would)
    w = gg.dlarray([2.0])
    opt = gg.optim.AdamW([w], learning_rate=0.1, weight_decay=0.5)
    opt.update([w], [gg.dlarray([0.0])])
    assert float(w[0]) == pytest.approx(2.0 * (1 - 0.05), abs=1e-15)
    assert float(opt.moments[(0,)][0][0]) == 0.0


@pytest.mark.parametrize(
    "settings",
    [
        dict(learning_rate=0.01),
        dict(learning_rate=0.01, rho=0.8, momentum=0.9),
        dict(learning_rate=0.005, centered=True),
        dict(learning_rate=0.005, centered=True, momentum=0.5, weight_decay=0.05, epsilon=1e-6),
    ],
)
def test_rmsprop_trajectory_matches_torch(settings):
    def make_gg(model):
        return gg.optim.RMSProp(model, **settings).update

    def make_torch(tensors):
        return torch.optim.RMSprop(
            tensors,
            lr=settings["learning_rate"],
            alpha=settings.get("rho", 0.9),
            eps=settings.get("epsilon", 1e-8),
            momentum=settings.get("momentum", 0.0),
            centered=settings.get("centered", False),
            weight_decay=settings.get("weight_decay", 0.0),
        )

    model, _, _ = _run_against_torch(make_gg, make_torch)
    assert not np.allclose(_flat(model)[0], _flat(_mlp())[0])


def test_rmsprop_complex_parameters_match_torch():
    p0 = R.standard_normal(3) + 1j * R.standard_normal(3)
    p = gg.dlarray(p0.copy())
    opt = gg.optim.RMSProp([p], learning_rate=0.05, momentum=0.5, centered=True)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = torch.optim.RMSprop([tp], lr=0.05, alpha=0.9, eps=1e-8, momentum=0.5, centered=True)
    for _ in range(4):
        g = R.standard_normal(3) + 1j * R.standard_normal(3)
        opt.update([p], [gg.dlarray(g)])
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=0, atol=1e-10)


def test_new_optimizer_argument_checks():
    with pytest.raises(ValueError, match=r"RMSProp: rho must be in \[0, 1\), got 1"):
        gg.optim.RMSProp(None, rho=1)
    with pytest.raises(ValueError, match="AdamW: weight_decay must be >= 0, got -1"):
        gg.optim.AdamW(None, weight_decay=-1)
    with pytest.raises(ValueError, match="RMSProp.update: grads is missing key"):
        model = _mlp()
        gg.optim.RMSProp(model).update(model, {"0": {}})


# ------------------------------------------------------------------ schedules


def _torch_rates(make_scheduler, base, steps):
    t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([t], lr=base)
    sched = make_scheduler(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize(
    ("schedule", "make_scheduler"),
    [
        (
            gg.optim.StepDecay(0.1, step_size=3, gamma=0.5),
            lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        ),
        (
            gg.optim.ExponentialDecay(0.1, gamma=0.9),
            lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
        ),
        (
            gg.optim.CosineDecay(0.1, decay_steps=10, min_learning_rate=0.01),
            lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01),
        ),
        (
            gg.optim.Warmup(0.1, warmup_steps=5),
            lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=4),
        ),
    ],
)
def test_schedules_match_torch_schedulers(schedule, make_scheduler):
    steps = 11
    expected = _torch_rates(make_scheduler, 0.1, steps)
    np.testing.assert_allclose([schedule(t) for t in range(steps)], expected, rtol=1e-12)


def test_warmup_then_cosine_formula():
    s = gg.optim.Warmup(gg.optim.CosineDecay(1.0, decay_steps=8), warmup_steps=3)
    expected = [
        (1 + math.cos(math.pi * min(t, 8) / 8)) / 2 * min(1, (t + 1) / 3) for t in range(10)
    ]
    np.testing.assert_allclose([s(t) for t in range(10)], expected, rtol=1e-14)


class _StepThenSchedule:
    """A torch optimizer whose step() also advances its scheduler."""

    def __init__(self, opt, scheduler):
        self.opt, self.scheduler = opt, scheduler

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        self.opt.step()
        self.scheduler.step()


@pytest.mark.parametrize("kind", ["sgd", "sgd_nesterov", "adam", "adamw", "rmsprop"])
def test_schedules_drive_every_optimizer_like_torch(kind):
    schedule = gg.optim.Warmup(gg.optim.StepDecay(0.05, step_size=3, gamma=0.5), warmup_steps=2)
    if kind == "sgd_nesterov":
        # S4TF's velocity form (v = mu v - lr g) equals torch's buffer form only for a
        # constant rate; with a schedule the trajectory follows its own formula
        w = gg.dlarray([1.0, -1.0])
        opt = gg.optim.SGD([w], learning_rate=schedule, momentum=0.9, nesterov=True)
        v = np.zeros(2)
        ref = np.array([1.0, -1.0])
        for t in range(6):
            g = np.array([0.3, -0.7]) * (t + 1)
            assert opt.current_learning_rate() == schedule(t)
            opt.update([w], [gg.dlarray(g)])
            v = 0.9 * v - schedule(t) * g
            ref = ref + 0.9 * v - schedule(t) * g
        np.testing.assert_allclose(w.numpy(), ref, rtol=1e-14)
        return
    makers = {
        "sgd": (
            lambda lr: dict(cls=gg.optim.SGD, kw={}),
            lambda t, lr: torch.optim.SGD(t, lr=lr),
        ),
        "adam": (
            lambda lr: dict(cls=gg.optim.Adam, kw=dict(epsilon=1e-14)),
            lambda t, lr: torch.optim.Adam(t, lr=lr, eps=1e-14),
        ),
        "adamw": (
            lambda lr: dict(cls=gg.optim.AdamW, kw=dict(epsilon=1e-14, weight_decay=0.1)),
            lambda t, lr: torch.optim.AdamW(t, lr=lr, eps=1e-14, weight_decay=0.1),
        ),
        "rmsprop": (
            lambda lr: dict(cls=gg.optim.RMSProp, kw=dict(momentum=0.5)),
            lambda t, lr: torch.optim.RMSprop(t, lr=lr, alpha=0.9, momentum=0.5),
        ),
    }
    make_mine, make_ref = makers[kind]

    def make_gg(model):
        spec = make_mine(schedule)
        return spec["cls"](model, learning_rate=schedule, **spec["kw"]).update

    def make_torch(tensors):
        opt = make_ref(tensors, 0.05)
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=1)
        step = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        chained = torch.optim.lr_scheduler.ChainedScheduler([warm, step])
        return _StepThenSchedule(opt, chained)

    _run_against_torch(make_gg, make_torch, steps=8)


def test_schedule_errors():
    with pytest.raises(ValueError, match="StepDecay: step_size must be an integer >= 1, got 0"):
        gg.optim.StepDecay(0.1, 0)
    with pytest.raises(ValueError, match="CosineDecay: learning_rate must be > 0"):
        gg.optim.CosineDecay(0, 10)
    with pytest.raises(TypeError, match="Warmup: after must be a number or a gg.optim schedule"):
        gg.optim.Warmup(lambda t: 0.1, 3)
    w = gg.dlarray([1.0])
    opt = gg.optim.SGD([w], learning_rate=lambda t: -1.0)
    with pytest.raises(
        ValueError, match=r"SGD: learning_rate \(the schedule's value\) must be > 0"
    ):
        opt.update([w], [gg.dlarray([1.0])])
    with pytest.raises(TypeError, match="SGD.state_dict: learning_rate is a function"):
        opt.state_dict()


# ------------------------------------------------------------------ clipping


def _grad_tree():
    return {
        "a": gg.dlarray(R.standard_normal((3, 4))),
        "b": [gg.dlarray(R.standard_normal(5)), gg.dlarray(R.standard_normal((2, 2)))],
    }


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    grads = _grad_tree()
    flat = [grads["a"], *grads["b"]]
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in flat]
    for t, g in zip(tensors, flat):
        t.grad = torch.tensor(g.numpy())
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    norm = gg.optim.global_norm(grads)
    assert float(norm) == pytest.approx(total.item(), rel=1e-13)
    clipped = gg.optim.clip_grad_norm(grads, max_norm)
    assert set(clipped) == {"a", "b"} and len(clipped["b"]) == 2
    for mine, t in zip([clipped["a"], *clipped["b"]], tensors):
        np.testing.assert_allclose(mine.numpy(), t.grad.numpy(), rtol=1e-13)
    assert (float(gg.optim.global_norm(clipped)) <= max_norm + 1e-9) or max_norm == 100.0


def test_clip_grad_value_matches_torch():
    grads = _grad_tree()
    flat = [grads["a"], *grads["b"]]
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in flat]
    for t, g in zip(tensors, flat):
        t.grad = torch.tensor(g.numpy())
    torch.nn.utils.clip_grad_value_(tensors, 0.3)
    clipped = gg.optim.clip_grad_value(grads, 0.3)
    for mine, t in zip([clipped["a"], *clipped["b"]], tensors):
        np.testing.assert_array_equal(mine.numpy(), t.grad.numpy())


def test_matlab_thresholds_follow_matlabs_helper_functions():
    grads = _grad_tree()
    threshold = 1.5
    per = gg.optim.thresholdL2Norm(grads, threshold)
    for mine, g in zip([per["a"], *per["b"]], [grads["a"], *grads["b"]]):
        g = g.numpy()
        n = np.sqrt((g**2).sum())
        expected = g * (threshold / n) if n > threshold else g
        np.testing.assert_allclose(mine.numpy(), expected, rtol=1e-14)
    glob = gg.optim.thresholdGlobalL2Norm(grads, threshold)
    flat = [g.numpy() for g in (grads["a"], *grads["b"])]
    total = np.sqrt(sum((g**2).sum() for g in flat))
    for mine, g in zip([glob["a"], *glob["b"]], flat):
        np.testing.assert_allclose(mine.numpy(), g * threshold / total, rtol=1e-14)
    small = gg.optim.thresholdGlobalL2Norm({"z": gg.zeros((3,))}, 1.0)
    np.testing.assert_array_equal(small["z"].numpy(), np.zeros(3))  # no 0/0
    with pytest.raises(ValueError, match="thresholdL2Norm: gradientThreshold must be > 0"):
        gg.optim.thresholdL2Norm(grads, 0)
    with pytest.raises(ValueError, match="clip_grad_norm: grads holds no dlarray"):
        gg.optim.clip_grad_norm({}, 1.0)


def test_clipping_is_differentiable_inside_a_trace():
    x = R.standard_normal(4)
    check_gradient(lambda v: gg.optim.clip_grad_norm([v], 0.5)[0], x)
    check_gradient(lambda v: gg.optim.thresholdGlobalL2Norm([v * 2], 0.5)[0], x)


# ------------------------------------------------------------------ saving optimizer state


@pytest.mark.parametrize(
    "make",
    [
        lambda m: gg.optim.SGD(m, learning_rate=0.05, momentum=0.9, nesterov=True),
        lambda m: gg.optim.Adam(m, learning_rate=gg.optim.ExponentialDecay(0.02, 0.9)),
        lambda m: gg.optim.AdamW(m, learning_rate=0.01, weight_decay=0.2),
        lambda m: gg.optim.RMSProp(
            m,
            learning_rate=gg.optim.Warmup(gg.optim.CosineDecay(0.01, 10), 3),
            momentum=0.5,
            centered=True,
        ),
    ],
)
def test_resumed_training_equals_uninterrupted(make):
    whole = _mlp()
    opt = make(whole)
    for _ in range(6):
        opt.update(whole, _loss_and_grads(whole)[1])

    first = _mlp()
    opt1 = make(first)
    for _ in range(3):
        opt1.update(first, _loss_and_grads(first)[1])
    state = opt1.state_dict()
    saved_params = [p.copy() for p in _flat(first)]
    # a fresh optimizer of the same kind, with other settings, restored from the state
    resumed = _mlp(seed=5)
    for p, v in zip(gg.tree.leaves(resumed.parameters()), saved_params):
        p._data[...] = v
    opt2 = make(None)
    opt2.learning_rate = 0.5
    opt2.load_state_dict(state)
    assert opt2.step == 3 and opt2.current_learning_rate() == opt1.current_learning_rate()
    for _ in range(3):
        opt2.update(resumed, _loss_and_grads(resumed)[1])
    for a, b in zip(_flat(whole), _flat(resumed)):
        np.testing.assert_array_equal(a, b)
    # the state is a copy: later updates of opt1 do not change it
    before = [e["value"].numpy().copy() for slot in state["slots"].values() for e in slot]
    opt1.update(first, _loss_and_grads(first)[1])
    after = [e["value"].numpy() for slot in state["slots"].values() for e in slot]
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)


def test_load_state_dict_errors():
    model = _mlp()
    sgd = gg.optim.SGD(model, momentum=0.9)
    sgd.update(model, _loss_and_grads(model)[1])
    with pytest.raises(ValueError, match="Adam.load_state_dict: the state is of a SGD optimizer"):
        gg.optim.Adam(model).load_state_dict(sgd.state_dict())
    with pytest.raises(ValueError, match="SGD.load_state_dict: expected a dict from state_dict()"):
        gg.optim.SGD(model).load_state_dict({"step": 1})
    bad = sgd.state_dict()
    bad["hyperparameters"]["learning_rate"] = {"schedule": "Linear"}
    with pytest.raises(ValueError, match="unknown schedule 'Linear'"):
        gg.optim.SGD(model).load_state_dict(bad)
    # a state for other shapes is caught at the next update
    other = gg.nn.Dense(2, 2)
    opt = gg.optim.SGD(other, momentum=0.9)
    shifted = sgd.state_dict()
    for e in shifted["slots"]["velocity"]:
        e["path"] = ["weight"] if e["path"][-1] == "weight" else ["bias"]
    opt.load_state_dict(shifted)
    with pytest.raises(ValueError, match="SGD.update: the parameter at \\['weight'\\] has shape"):
        opt.update(other, {"weight": gg.ones((2, 2)), "bias": gg.ones((2,))})

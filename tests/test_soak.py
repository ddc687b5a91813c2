"""Soak tests (marked ``soak``): long loops keep memory flat, threads agree with a
single thread, checkpoint replay survives concurrent draws, the emu device handles
odd shapes. CI runs them at reduced size; ``GPUGRAD_SOAK_SCALE=1`` runs the full
20 000 dlfeval steps and 2 000 LSTM steps (each test prints its figures)."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import tracemalloc

import numpy as np
import pytest

import gpugrad as gg

pytestmark = pytest.mark.soak
SCALE = float(os.environ.get("GPUGRAD_SOAK_SCALE", "0.1"))


def _growth_per_1000(step, n):
    """Bytes of Python memory (tracemalloc) and saved bytes (gg.memory) gained per
    1 000 steps between the end of a warm-up (n // 5 steps) and the end."""
    warm = max(n // 5, 10)
    for i in range(warm):
        step(i)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        saved_before = gg.memory.saved_bytes()
        for i in range(warm, n):
            step(i)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per = 1000 / (n - warm)
    return (after - before) * per, (gg.memory.saved_bytes() - saved_before) * per


def test_many_small_dlfeval_steps_keep_memory_flat():
    n = max(int(20_000 * SCALE), 500)
    rng = np.random.default_rng(0)
    w = gg.dlarray(rng.standard_normal((4, 3)))
    x = gg.dlarray(rng.standard_normal((3, 5)))

    def loss(w):
        return gg.dlgradient(gg.sum(gg.tanh(gg.matmul(w, x)) ** 2), w)

    state = {"w": w}

    def step(i):
        g = gg.dlfeval(loss, state["w"])
        state["w"] = state["w"] - 0.01 * g

    py, saved = _growth_per_1000(step, n)
    print(f"dlfeval: {n} steps, {py:.0f} B per 1000 steps (Python), {saved:.0f} B saved")
    assert saved == 0
    assert py < 16_384


def test_lstm_training_steps_keep_memory_flat():
    n = max(int(2_000 * SCALE), 100)
    rng = np.random.default_rng(1)
    h = 8
    xs = gg.dlarray(rng.standard_normal((4, 3, 6)), "CBT")
    h0 = gg.dlarray(np.zeros((h, 3)), "CB")
    params = [
        gg.dlarray(rng.standard_normal((4 * h, 4)) * 0.3),
        gg.dlarray(rng.standard_normal((4 * h, h)) * 0.3),
        gg.dlarray(np.zeros(4 * h)),
    ]
    opt = {"m": None, "v": None}

    def loss(w, r, b):
        y, _, _ = gg.lstm(xs, h0, h0, w, r, b)
        return gg.dlgradient(gg.mean(y * y), w, r, b)

    def step(i):
        grads = gg.dlfeval(loss, *params)
        params[:], opt["m"], opt["v"] = gg.adamupdate(
            list(params), list(grads), opt["m"], opt["v"], i + 1
        )

    py, saved = _growth_per_1000(step, n)
    print(f"lstm: {n} steps, {py:.0f} B per 1000 steps (Python), {saved:.0f} B saved")
    assert saved == 0
    assert py < 65_536


def test_eight_threads_compute_the_single_threaded_gradients():
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((5, 4)) for _ in range(8)]
    w = rng.standard_normal((4, 4))

    def grad(a):
        def f(x, w):
            y = gg.sum(gg.logsumexp(gg.matmul(gg.tanh(x), w), axis=1) * gg.sin(x[:, 0]))
            return gg.dlgradient(y, x, w)

        return [g.numpy() for g in gg.dlfeval(f, gg.dlarray(a), gg.dlarray(w))]

    single = [grad(a) for a in inputs]
    rounds = max(int(50 * SCALE * 10), 20)
    results = {}
    errors = []

    def worker(k):
        try:
            for _ in range(rounds):
                got = grad(inputs[k])
                if not all(np.array_equal(g, s) for g, s in zip(got, single[k])):
                    results[k] = "differs"
                    return
            results[k] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == {k: "ok" for k in range(8)}


def test_checkpoint_replay_under_concurrent_draws_soak():
    stop = threading.Event()

    def augment():
        while not stop.is_set():
            gg.random.uniform(shape=(13,))

    def step(x):
        def f(a):
            return gg.tanh(gg.dropout(a, 0.4) * 2.0)

        with gg.autograd.train_mode():
            y = gg.checkpoint(f, x)
            return y, gg.dlgradient(gg.sum(y), x)

    drawers = [threading.Thread(target=augment) for _ in range(2)]
    for t in drawers:
        t.start()
    bad = 0
    try:
        for _ in range(max(int(1000 * SCALE), 50)):
            y, g = gg.dlfeval(step, gg.dlarray(np.ones(32)))
            yv = y.numpy()
            expected = np.where(yv != 0, (1 - yv**2) * 2.0 / 0.6, 0.0)
            bad += not np.allclose(g.numpy(), expected)
    finally:
        stop.set()
        for t in drawers:
            t.join()
    assert bad == 0


ODD = [(1, 1, 1), (1, 7, 1), (7, 1, 13), (3, 5, 7), (13, 11, 2), (1, 3, 1031), (17, 19, 23)]


@pytest.mark.skipif(shutil.which("g++") is None, reason="the emu device needs g++")
@pytest.mark.parametrize("m,n,k", ODD, ids=[f"{m}x{n}x{k}" for m, n, k in ODD])
def test_emu_device_on_odd_shapes(m, n, k):
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    x = rng.standard_normal((k, m)).astype(np.float32)  # 'CB': k features, batch m
    w = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)

    def run():
        def f(x, w, b):
            y = gg.relu(gg.fullyconnect(gg.dlarray(x, "CB"), w, b))
            return y, gg.dlgradient(gg.sum(y * y), x, w, b)

        y, grads = gg.dlfeval(f, gg.dlarray(x), gg.dlarray(w), gg.dlarray(b))
        return [y.numpy()] + [g.numpy() for g in grads]

    cpu = run()
    old = gg.device()
    gg.backend.set_device("emu")
    try:
        emu = run()
    finally:
        gg.backend.set_device(old)
    for a, c in zip(emu, cpu):
        assert a.shape == c.shape
        np.testing.assert_allclose(a, c, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(c).max()))

"""Measured dispatch (gpugrad.backend.dispatch): policy switch, timing with a fake clock,
validation against the hand kernel, the on-disk cache and its invalidation, the report,
and the hooks in the kernels' op entry points (on emu)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gpugrad import backend
from gpugrad.backend import dispatch, kernels


class FakeClock:
    """Seconds that only move when a fake candidate 'runs'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake(clock, name, kind, seconds, value=1.0, calls=None):
    """A candidate that takes ``seconds`` on the fake clock and returns ``value``."""

    def run():
        clock.now += seconds
        if calls is not None:
            calls[name] = calls.get(name, 0) + 1
        return np.full(3, value)

    return dispatch.Candidate(name, kind, run)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def auto():
    with dispatch.policy("auto"):
        yield


KEY = {"device": "cuda", "name": "Fake H200", "driver": 13000, "cupy": "14.2.0"}


def make(clock, tmp_path=None, key=KEY, **kw):
    cache = None if tmp_path is None else tmp_path / "choices.json"
    return dispatch.Dispatcher(
        clock=clock, sync=lambda: None, cache_file=cache, device_key=key, **kw
    )


# --------------------------------------------------------------------------- policy


def test_tests_run_with_the_hand_policy_pinned(monkeypatch):
    # tests/conftest.py pins it, so every hand kernel stays covered even on a GPU
    assert os.environ[dispatch.ENV] == "hand"
    monkeypatch.setattr(backend, "device", lambda: "cuda")
    assert dispatch.get_policy() == "hand"


def test_default_policy_by_device_and_env(monkeypatch):
    monkeypatch.delenv(dispatch.ENV)
    monkeypatch.setattr(backend, "device", lambda: "cuda")
    assert dispatch.get_policy() == "auto"
    monkeypatch.setattr(backend, "device", lambda: "emu")
    assert dispatch.get_policy() == "hand"
    monkeypatch.setenv(dispatch.ENV, "Vendor")
    assert dispatch.get_policy() == "vendor"
    monkeypatch.setenv(dispatch.ENV, "fastest")
    with pytest.raises(ValueError, match="GPUGRAD_KERNEL_POLICY.*'fastest'"):
        dispatch.get_policy()


def test_set_policy_overrides_env_and_none_restores(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "hand")
    kernels.set_policy("auto")
    try:
        assert kernels.get_policy() == "auto"
        with dispatch.policy("vendor"):
            assert dispatch.get_policy() == "vendor"
        assert dispatch.get_policy() == "auto"
    finally:
        kernels.set_policy(None)
    assert dispatch.get_policy() == "hand"
    with pytest.raises(ValueError, match="set_policy: policy must be one of"):
        dispatch.set_policy("cudnn")


def test_hand_and_vendor_policies_never_time(clock):
    d = make(clock)
    calls = {}
    cands = [fake(clock, "hand", "hand", 5.0, calls=calls)]
    cands.append(fake(clock, "vendor", "vendor", 1.0, calls=calls))
    with dispatch.policy("hand"):
        d.run("matmul", "m64", "f32", cands)
    with dispatch.policy("vendor"):
        d.run("matmul", "m64", "f32", cands)
        d.run("matmul", "m64", "f32", cands[:1])  # no vendor candidate: the hand kernel
    assert calls == {"hand": 2, "vendor": 1}
    assert d.report().counts["matmul"]["m64"]["f32"] == {"hand": 2, "vendor": 1}
    assert d.report().choices == {}


def test_first_candidate_must_be_the_hand_kernel(clock):
    with pytest.raises(ValueError, match="first candidate must be the hand kernel"):
        make(clock).run("matmul", "m", "f32", [fake(clock, "vendor", "vendor", 1.0)])


# --------------------------------------------------------------------------- auto


def test_auto_times_once_and_keeps_the_fastest(clock, auto):
    d = make(clock, warmup=1, repeats=3)
    calls = {}
    cands = [
        fake(clock, "hand", "hand", 3e-3, calls=calls),
        fake(clock, "hand-tf32", "hand", 1e-3, calls=calls),
        fake(clock, "vendor", "vendor", 2e-3, calls=calls),
    ]
    out = d.run("conv2d_fwd", ("p4096", "k3x3"), "f32", cands)
    np.testing.assert_array_equal(out, np.ones(3))
    # 1 warm-up + 3 timed runs each; the winner's last timed result is returned
    assert calls == {"hand": 4, "hand-tf32": 4, "vendor": 4}
    for _ in range(5):
        d.run("conv2d_fwd", ("p4096", "k3x3"), "f32", cands)
    assert calls == {"hand": 4, "hand-tf32": 9, "vendor": 4}
    rep = d.report()
    choice = rep.choices["conv2d_fwd"]["p4096 k3x3"]["f32"]
    assert choice.impl == "hand-tf32"
    assert choice.times == pytest.approx({"hand": 3e-3, "hand-tf32": 1e-3, "vendor": 2e-3})
    assert rep.counts["conv2d_fwd"]["p4096 k3x3"]["f32"] == {"hand-tf32": 6}
    # another dtype or shape class is a separate decision
    d.run("conv2d_fwd", ("p4096", "k3x3"), "f64", cands)
    assert calls["hand"] == 8


def test_auto_prefers_hand_on_a_tie_and_skips_timing_a_single_candidate(clock, auto):
    d = make(clock)
    calls = {}
    tie = [fake(clock, "hand", "hand", 1.0, calls=calls)]
    tie.append(fake(clock, "vendor", "vendor", 1.0, calls=calls))
    d.run("matmul", "m", "f32", tie)
    assert d.report().choices["matmul"]["m"]["f32"].impl == "hand"
    calls.clear()
    d.run("relu", "n", "f32", [fake(clock, "hand", "hand", 1.0, calls=calls)])
    assert calls == {"hand": 1} and "relu" not in d.report().choices


def test_auto_rejects_a_candidate_whose_result_differs(clock, auto, caplog):
    d = make(clock)
    wrong = fake(clock, "vendor", "vendor", 1e-4, value=1.01)  # fast but 1 % off
    out = d.run("matmul", "m", "f32", [fake(clock, "hand", "hand", 1e-3), wrong])
    np.testing.assert_array_equal(out, np.ones(3))
    choice = d.report().choices["matmul"]["m"]["f32"]
    assert choice.impl == "hand" and "vendor" not in choice.times
    assert "differs from the hand kernel by 0.01" in choice.rejected["vendor"]
    # a looser tolerance (e.g. a TF32 variant) is the candidate's own
    loose = dispatch.Candidate("hand-tf32", "hand", wrong.run, rtol=0.05)
    d.run("matmul", "m2", "f32", [fake(clock, "hand", "hand", 1e-3), loose])
    assert d.report().choices["matmul"]["m2"]["f32"].impl == "hand-tf32"


def test_auto_rejects_a_candidate_that_raises(clock, auto):
    def broken():
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED")

    d = make(clock)
    cands = [fake(clock, "hand", "hand", 1.0), dispatch.Candidate("vendor", "vendor", broken)]
    d.run("matmul", "m", "f64", cands)
    choice = d.report().choices["matmul"]["m"]["f64"]
    assert choice.impl == "hand"
    assert "RuntimeError: CUBLAS_STATUS_NOT_SUPPORTED" in choice.rejected["vendor"]


def test_nan_results_agree_when_both_are_nan(clock, auto):
    def nan_run(seconds):
        def run():
            clock.now += seconds
            return np.array([np.nan, 1.0, np.inf])

        return run

    d = make(clock)
    cands = [dispatch.Candidate("hand", "hand", nan_run(2.0))]
    cands.append(dispatch.Candidate("vendor", "vendor", nan_run(1.0)))
    d.run("matmul", "m", "f32", cands)
    assert d.report().choices["matmul"]["m"]["f32"].impl == "vendor"


# --------------------------------------------------------------------------- disk cache


def test_cache_round_trip_reuses_choices_without_timing(clock, auto, tmp_path):
    calls = {}
    cands = [fake(clock, "hand", "hand", 2.0, calls=calls)]
    cands.append(fake(clock, "vendor", "vendor", 1.0, calls=calls))
    make(clock, tmp_path).run("matmul", "m4096 n4096 k4096 NN", "f32", cands)
    data = json.loads((tmp_path / "choices.json").read_text())
    assert data["device_key"] == KEY
    (row,) = data["choices"]
    assert (row["op"], row["impl"], row["candidates"]) == ("matmul", "vendor", ["hand", "vendor"])
    calls.clear()
    fresh = make(clock, tmp_path)  # a new process: same device key, same file
    fresh.run("matmul", "m4096 n4096 k4096 NN", "f32", cands)
    assert calls == {"vendor": 1}  # no timing, straight to the cached choice
    assert fresh.report().choices["matmul"]["m4096 n4096 k4096 NN"]["f32"].impl == "vendor"


def test_cache_is_invalidated_by_a_new_device_key_or_candidate_set(clock, auto, tmp_path):
    calls = {}
    cands = [fake(clock, "hand", "hand", 2.0, calls=calls)]
    cands.append(fake(clock, "vendor", "vendor", 1.0, calls=calls))
    make(clock, tmp_path).run("matmul", "m", "f32", cands)
    calls.clear()
    newer = dict(KEY, driver=13010)  # a driver update: measure again
    make(clock, tmp_path, key=newer).run("matmul", "m", "f32", cands)
    assert calls == {"hand": 4, "vendor": 4}
    assert json.loads((tmp_path / "choices.json").read_text())["device_key"] == newer
    calls.clear()
    more = [*cands, fake(clock, "hand-tf32", "hand", 0.5, calls=calls)]
    d = make(clock, tmp_path, key=newer)
    d.run("matmul", "m", "f32", more)  # TF32 switched on: a new candidate set is timed
    assert calls == {"hand": 4, "vendor": 4, "hand-tf32": 4}
    assert d.report().choices["matmul"]["m"]["f32"].impl == "hand-tf32"


def test_unreadable_cache_is_ignored_and_rewritten(clock, auto, tmp_path, caplog):
    (tmp_path / "choices.json").write_text("{not json")
    d = make(clock, tmp_path)
    d.run("matmul", "m", "f32", [fake(clock, "hand", "hand", 2.0), fake(clock, "v", "vendor", 1)])
    assert json.loads((tmp_path / "choices.json").read_text())["choices"][0]["impl"] == "v"


def test_default_cache_file_lives_under_the_cache_dir_and_names_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUGRAD_CACHE_DIR", str(tmp_path))
    a = dispatch.Dispatcher(device_key=KEY).cache_file
    b = dispatch.Dispatcher(device_key=dict(KEY, cupy="15.0.0")).cache_file
    assert a.parent == tmp_path / "dispatch" and a != b


# --------------------------------------------------------------------------- report


def test_report_is_structured_extensible_and_printable(clock, auto):
    d = make(clock)
    cands = [fake(clock, "hand", "hand", 2e-6), fake(clock, "vendor", "vendor", 1e-6)]
    d.run("matmul", "m64 n64 k64 NN", "f32", cands)
    d.run("matmul", "m64 n64 k64 NN", "f32", cands)
    dispatch.register_report_section("transfers", lambda: {"host_to_device": 3})
    try:
        rep = d.report()
        assert rep.policy == "auto" and rep.device_key == KEY
        assert rep.sections["transfers"] == {"host_to_device": 3}
        plain = rep.as_dict()
        json.dumps(plain)  # plain data only
        assert plain["counts"] == {"matmul": {"m64 n64 k64 NN": {"f32": {"vendor": 2}}}}
        assert plain["choices"]["matmul"]["m64 n64 k64 NN"]["f32"]["impl"] == "vendor"
        text = str(rep)
        assert "matmul" in text and "vendor x2" in text and "hand 2.0 us" in text
        assert "transfers: {'host_to_device': 3}" in text
    finally:
        dispatch._report_sections.pop("transfers")
    d.reset_report()
    assert d.report().counts == {}


def test_bucket_is_monotone_and_exact_for_small_extents():
    values = [1, 2, 15, 16, 17, 31, 32, 33, 1000, 4096, 4097]
    got = [dispatch.bucket(v) for v in values]
    assert got == [1, 2, 15, 16, 32, 32, 32, 64, 1024, 4096, 8192]
    assert all(b >= v for b, v in zip(got, values))


# --------------------------------------------------------------------------- kernel hooks


def conv_reference(x, w, geo):
    """Stride-1, ungrouped NHWC convolution in NumPy (for the variant test)."""
    t, b, l, r = geo.pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, b), (l, r), (0, 0)))
    y = np.zeros((geo.n, geo.ho, geo.wo, geo.cout))
    for i in range(geo.kh):
        for j in range(geo.kw):
            y += xp[:, i : i + geo.ho, j : j + geo.wo, :] @ w[i, j].astype(np.float64)
    return y.astype(x.dtype)


@pytest.fixture
def emu_dispatcher(monkeypatch, clock):
    previous = backend.device()
    backend.set_device("emu")
    d = make(clock)
    monkeypatch.setattr(dispatch, "_default", d)
    yield d
    backend.set_device(previous)


def test_conv_and_matmul_entry_points_are_dispatched_and_counted(emu_dispatcher, rng):
    x = rng.standard_normal((2, 9, 7, 8)).astype(np.float32)
    w = rng.standard_normal((3, 3, 8, 4)).astype(np.float32)
    with dispatch.policy("auto"):  # on emu there is no vendor: the hand kernel, untimed
        y = kernels.conv2d_fwd(x, w, stride=2, padding=1)
        kernels.conv2d_bwd_data(y, w, x.shape, stride=2, padding=1)
        kernels.conv2d_bwd_filter(y, x, w.shape, stride=2, padding=1)
        kernels.matmul(x.reshape(-1, 8), w[0, 0], relu=True)
    counts = kernels.report().counts
    assert counts["conv2d_fwd"] == {"p64 k3x3 cg8 ng4 s2x2 d1x1 g1": {"f32": {"hand": 1}}}
    assert counts["conv2d_bwd_data"]["p64 k3x3 cg8 ng4 s2x2 d1x1 g1"]["f32"] == {"hand": 1}
    assert counts["conv2d_bwd_filter"]["p64 k3x3 cg8 ng4 s2x2 d1x1 g1"]["f32"] == {"hand": 1}
    assert counts["matmul"] == {"m128 n4 k8 NN+relu": {"f32": {"hand": 1}}}
    assert kernels.report().choices == {}


def test_a_registered_variant_competes_under_auto(emu_dispatcher, clock, monkeypatch, rng):
    """How a TF32 kernel (or a vendor convolution) plugs in: a factory per op."""
    monkeypatch.setattr(dispatch, "_variants", {})
    seen = []

    def factory(call):
        seen.append(sorted(call))
        x, w = call["x"], call["w"]

        def run():
            clock.now -= 1.0  # 'faster' than anything
            return conv_reference(x, w, call["geometry"])

        return dispatch.Candidate("hand-tf32", "hand", run, rtol=1e-5)

    dispatch.register_variant("conv2d_fwd", factory)
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    with dispatch.policy("auto"):
        y = kernels.conv2d_fwd(x, w, padding=1)
    with dispatch.policy("hand"):
        y_hand = kernels.conv2d_fwd(x, w, padding=1)
    np.testing.assert_allclose(y, y_hand, rtol=1e-5, atol=1e-5)
    assert seen[0] == ["bias", "geometry", "relu", "w", "x"]
    (choice,) = kernels.report().choices["conv2d_fwd"].values()
    assert choice["f32"].impl == "hand-tf32"


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_vendor_matmul_matches_the_hand_kernel(emu_dispatcher, rng, trans_a, trans_b):
    a = rng.standard_normal((7, 5) if trans_a else (5, 7))
    b = rng.standard_normal((3, 7) if trans_b else (7, 3))
    bias = rng.standard_normal(3)
    mask = rng.standard_normal(a.shape)
    a[0, 0] = np.nan
    kw = dict(trans_a=trans_a, trans_b=trans_b, bias=bias, relu=True, alpha=0.5, mask=mask)
    with dispatch.policy("hand"):
        hand = kernels.matmul(a, b, **kw)
    vendor = kernels.vendor_matmul(a, b, **kw)
    np.testing.assert_allclose(vendor, hand, rtol=1e-12, atol=1e-12)
    assert np.isnan(hand).any() == np.isnan(vendor).any()

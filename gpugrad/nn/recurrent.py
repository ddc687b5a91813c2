"""The whole-sequence LSTM primitive.

Forward: the input projection of all steps in ONE GEMM, then the recurrence: on
cuda/emu one cooperative launch of the persistent kernel (``lstm_persistent_fwd``:
recurrent weights resident in shared memory, one grid barrier per step), or, when the
weights do not fit, the fused ``lstm_cell_fwd`` kernel per step; NumPy on cpu. The
primitive also outputs every cell state and the activated gates, which its VJP reads.

Backward is one whole-sequence VJP: on raw arrays (``lstm_persistent_bwd``, else
``lstm_cell_bwd`` per step; weight gradients one GEMM each) when nothing is recorded,
and written with gpugrad ops when recording (``enable_higher_derivatives``), so higher
derivatives flow through it. Because the saved cell states and gates are outputs of
the node, the VJP also takes cotangents for them (they are nonzero only in
higher-order passes).
"""

from __future__ import annotations

import time

import numpy as np

from .. import _accel_graph, tape
from ..ops.core import _STATE, Primitive, bind, host_call, is_known_zero, make
from ..ops.elementwise import tanh
from ..ops.heavy import kernels_for, matmul_t
from ..ops.reduce import column_sum
from ..ops.reduce import sum as gsum
from ..ops.shape import concatenate, reshape, stack
from ._prims import POOL


def _xp():
    return _STATE["xp"]


def _sigmoid(v):
    xp = _xp()
    return 0.5 * (xp.tanh(0.5 * v) + 1)  # why: stable for large |v|


def _on_device_dtype(*raws, bias=None):
    """On the cuda path, operands of mixed float dtypes cast to their common one (the
    NumPy code is host-only: pooled host buffers, ``out=`` into NumPy arrays).
    ``bias``: the bias's metadata when only its dtype is known (the backward)."""
    dtypes = [a.dtype for a in raws] + ([] if bias is None else [bias.dtype])
    if _xp() is np or (len(set(dtypes)) == 1 and kernels_for(*raws) is not None):
        return raws
    dt = np.result_type(*dtypes)
    if dt not in (np.float32, np.float64):
        raise TypeError(
            f"lstm: on the cuda device the operands must be float32 or float64, got {dt}"
        )
    return tuple(a.astype(dt, copy=False) for a in raws)


def _fwd(xs, h0, c0, w, r, b):
    xp = _xp()
    t, n, c = xs.shape
    hid = r.shape[1]
    xs, h0, c0, w, r, b = _on_device_dtype(xs, h0, c0, w, r, b)
    k = kernels_for(xs, h0, c0, w, r, b)
    if k is None:
        return _fwd_numpy(_rows(xs), h0, c0, w, r, b, t, n, hid)
    flat = xs.reshape(t * n, c)
    proj = k.matmul(flat, w, trans_b=True, bias=b)
    proj = proj.reshape(t, n, 4 * hid)
    if t and k.lstm_persistent_plan("fwd", n, hid, proj.dtype) is not None:
        # the whole recurrence in one cooperative launch (weights resident on chip)
        ys, cs, gates = k.lstm_persistent_fwd(proj, r, h0, c0)
        return ys, ys[-1].copy(), cs[-1].copy(), cs, gates
    ys = xp.empty((t, n, hid), dtype=proj.dtype)
    cs = xp.empty((t, n, hid), dtype=proj.dtype)
    gates = xp.empty((t, n, 4 * hid), dtype=proj.dtype)
    h, cell = h0, c0
    for step in range(t):
        pre = k.matmul(h, r, trans_b=True, bias=None) + proj[step]
        h, cell, gt = k.lstm_cell_fwd(pre, cell)
        gates[step] = gt
        ys[step] = h
        cs[step] = cell
    return ys, ys[-1].copy(), cs[-1].copy(), cs, gates


def _gate_affine(hid, dt):
    """Per-column ``scale``/``offset`` of the [N, 4H] gate buffer: sigmoid(v) =
    0.5 * tanh(0.5 v) + 0.5 on the i, f, o blocks, tanh(v) on the cell candidate."""
    scale = np.full(4 * hid, 0.5, dtype=dt)
    scale[2 * hid : 3 * hid] = 1
    offset = np.full(4 * hid, 0.5, dtype=dt)
    offset[2 * hid : 3 * hid] = 0
    return scale, offset


def _rows(xs):
    """``xs[T, N, C]`` as a C-contiguous ``[T*N, C]`` array (a pooled copy if needed)."""
    t, n, c = xs.shape
    if xs.flags.c_contiguous:
        return xs.reshape(t * n, c)
    out = POOL.empty((t, n, c), xs.dtype)
    np.copyto(out, xs)
    return out.reshape(t * n, c)


# Threads NumPy's BLAS uses for the recurrence's per-step GEMMs ([N, H] x [H, 4H]):
# "auto" (measured per shape, and again every RETUNE_CALLS calls as the machine's load
# changes: steps with BLAS's own thread count and with one thread, interleaved; BLAS's
# threads are kept only when clearly, 20%, faster), an int, or None (leave BLAS alone).
# why: those GEMMs are small (M = batch) and OpenBLAS hands each one to its threads,
# which spin-wait; on a 2-core machine running other work a [64, 256] x [256, 1024]
# float32 GEMM measured 2-4 GFLOP/s of CPU time with 2 threads and 29-37 with 1 (and at
# best 26 with 2 in a quiet moment); on an idle many-core machine the threads may win.
# The big GEMMs (input projection, weight gradients) keep BLAS's own count. OpenBLAS
# gives bitwise the same products whatever the thread count (checked for these
# shapes), so the choice never changes a result. Needs threadpoolctl.
STEP_BLAS_THREADS = "auto"
RETUNE_CALLS = 16
_STEP_CHOICE = {}  # (loop, N, H, dtype) -> threads for the steps (None: BLAS's own)
_STEP_CALLS = {}  # (loop, N, H, dtype) -> calls since it was measured


class _BlasLimit:
    """BLAS limited to ``threads`` for a block (None: unchanged)."""

    controllers = None

    def __init__(self, threads):
        self.threads = threads

    def __enter__(self):
        self.restore = []
        if self.threads is None:
            return self
        for ctl in _blas_controllers():
            current = ctl.get_num_threads()
            if current is not None and current != self.threads:
                ctl.set_num_threads(self.threads)
                self.restore.append((ctl, current))
        return self

    def __exit__(self, *exc):
        for ctl, current in self.restore:
            ctl.set_num_threads(current)
        return False


def _blas_controllers():
    ctls = _BlasLimit.controllers
    if ctls is None:
        ctls = []
        try:
            import threadpoolctl  # noqa: PLC0415 - optional, looked up once

            found = threadpoolctl.ThreadpoolController().select(user_api="blas")
            ctls = list(found.lib_controllers)
        except Exception:  # noqa: BLE001 - not installed, or an unknown BLAS: leave it
            ctls = []
        _BlasLimit.controllers = ctls
    return ctls


def _blas_threads():
    counts = [c.get_num_threads() for c in _blas_controllers()]
    return max((c for c in counts if c is not None), default=1)


def _run_steps(loop, key, t):
    """Run ``loop(lo, hi)`` (loop iterations lo..hi-1, in order) over ``t`` iterations
    with the BLAS thread count of ``STEP_BLAS_THREADS`` (see there)."""
    policy = STEP_BLAS_THREADS
    if policy is None or not _blas_controllers():
        return loop(0, t)
    if policy != "auto":
        with _BlasLimit(int(policy)):
            return loop(0, t)
    calls = _STEP_CALLS.get(key, 0)
    _STEP_CALLS[key] = calls + 1
    if key in _STEP_CHOICE and calls < RETUNE_CALLS:
        with _BlasLimit(_STEP_CHOICE[key]):
            return loop(0, t)
    if t < 9 or _blas_threads() <= 1:  # too short to measure, or nothing to choose
        return loop(0, t)
    # steps 1.. in four slots, BLAS's own threads and one thread taking turns (so a
    # change of load in the middle hits both); step 0 warms the caches
    k = min(4, (t - 1) // 8)
    loop(0, 1)
    spent = {None: 0.0, 1: 0.0}
    lo = 1
    for threads in (None, 1, None, 1):
        with _BlasLimit(threads):
            t0 = time.perf_counter()
            loop(lo, lo + k)
            spent[threads] += time.perf_counter() - t0
        lo += k
    # why: BLAS's threads must win clearly: on a shared machine their bad case is ten
    # times slower, their good case (an idle machine) a fraction faster
    choice = _STEP_CHOICE[key] = None if spent[None] < 0.8 * spent[1] else 1
    _STEP_CALLS[key] = 0
    with _BlasLimit(choice):
        return loop(lo, t)


def _fwd_numpy(flat, h0, c0, w, r, b, t, n, hid):
    # why: the 0.5 pre-scale of the sigmoid blocks is folded into the weights (a
    # power-of-two scale is exact), so each step is one GEMM plus in-place ufuncs on
    # one fused [N, 4H] gate row and no per-step allocation
    dt = np.result_type(flat, w, b)
    scale, offset = _gate_affine(hid, dt)
    gates = POOL.empty((t, n, 4 * hid), dt)
    np.matmul(flat, (w * scale[:, None]).astype(dt, copy=False).T, out=gates.reshape(t * n, -1))
    gates += b * scale
    r_t = np.ascontiguousarray((r * scale[:, None]).astype(dt, copy=False).T)
    ys = POOL.empty((t, n, hid), dt)
    cs = POOL.empty((t, n, hid), dt)
    rec = np.empty((n, 4 * hid), dtype=dt)
    tmp = np.empty((n, hid), dtype=dt)
    state = [h0.astype(dt, copy=False), c0.astype(dt, copy=False)]

    def loop(lo, hi):
        state[:] = _fwd_steps(gates, ys, cs, rec, tmp, r_t, scale, offset, *state, lo, hi, hid)

    _run_steps(loop, ("fwd", n, hid, dt), t)
    return ys, ys[-1].copy(), cs[-1].copy(), cs, gates


def _fwd_steps(gates, ys, cs, rec, tmp, r_t, scale, offset, h, cell, lo, hi, hid):
    for step in range(lo, hi):
        gt = gates[step]
        np.matmul(h, r_t, out=rec)
        gt += rec
        np.tanh(gt, out=gt)
        gt *= scale
        gt += offset
        cell_new = cs[step]
        np.multiply(gt[:, hid : 2 * hid], cell, out=cell_new)
        np.multiply(gt[:, :hid], gt[:, 2 * hid : 3 * hid], out=tmp)
        cell_new += tmp
        np.tanh(cell_new, out=tmp)
        h = ys[step]
        np.multiply(gt[:, 3 * hid :], tmp, out=h)
        cell = cell_new
    return h, cell


def _act_grad(gates, hid):
    """Derivative of each gate activation, from the activated gate values (raw)."""
    out = gates * (1 - gates)
    gc = gates[..., 2 * hid : 3 * hid]
    out[..., 2 * hid : 3 * hid] = 1 - gc * gc
    return out


@host_call  # raw code on the data: a gg.dlaccelerate replay repeats it
def _vjp_raw(g, ans, xs, h0, c0, w, r, b, need_x=True):
    xp = _xp()
    g_ys, g_h, g_c, g_cs, g_gates = (x._data for x in g)
    ys, _, _, cs, gates = (a._data for a in ans)
    xs, h0, c0, w, r = xs._data, h0._data, c0._data, w._data, r._data
    t, n, c = xs.shape
    hid = r.shape[1]
    # why: the forward fell back to NumPy unless every operand (the bias too) shared
    # one kernel dtype; the backward must take the same path (gates has its dtype)
    xs, h0, c0, w, r, gates = _on_device_dtype(xs, h0, c0, w, r, gates, bias=b)
    k = (
        kernels_for(xs, h0, c0, w, r, gates)
        if _xp() is not np
        else kernels_for(xs, h0, c0, w, r, b, gates)
    )
    if k is None:
        dpre_all, dh_next, dc_next = _bwd_recurrence_numpy(
            g_ys, g_h, g_c, g_cs, g_gates, ys, cs, gates, h0, c0, r
        )
        grads = _weight_grads(dpre_all, xs, ys, h0, w, dh_next, dc_next, need_x)
        return tuple(None if v is None else make(v) for v in grads)
    persistent = t and k.lstm_persistent_plan("bwd", n, hid, ys.dtype) is not None
    if persistent:  # the whole dh/dc recurrence in one cooperative launch
        # why g_gates always: reading zeros is cheaper than a host sync to test for them
        dpre_all, dh_next, dc_next = k.lstm_persistent_bwd(
            g_ys, g_h, g_c, g_cs, g_gates, gates, cs, c0, r
        )
    else:
        # why: xp.any on the device is a host sync; the gates output is internal, so its
        # cotangent is nearly always the engine's zeros, known without a look at the data
        # and none inside a graph capture (gg.dlaccelerate on cuda)
        extra_gates = _accel_graph.CAPTURING or (
            not is_known_zero(g_gates) and bool(xp.any(g_gates))
        )
        dpre_all = xp.empty((t, n, 4 * hid), dtype=ys.dtype)
        dh_next = g_h.copy()
        dc_next = g_c.copy()
    for step in range(t - 1, -1, -1) if not persistent else ():  # the per-step path
        dh = g_ys[step] + dh_next
        dc = dc_next + g_cs[step]
        c_prev = cs[step - 1] if step else c0
        gt = gates[step]
        dpre, dc_next = k.lstm_cell_bwd(dh, dc, gt, c_prev, cs[step])
        if extra_gates:
            dpre = dpre + g_gates[step] * _act_grad(gt, hid)
        dpre_all[step] = dpre
        dh_next = dpre @ r
    flat = dpre_all.reshape(t * n, 4 * hid)
    hprev = xp.concatenate([h0[None], ys[:-1]], axis=0).reshape(t * n, hid)
    gx = (flat @ w).reshape(t, n, c) if need_x else None
    gw = flat.T @ xs.reshape(t * n, c)
    gr = flat.T @ hprev
    gb = flat.sum(axis=0)
    return tuple(None if v is None else make(v) for v in (gx, dh_next, dc_next, gw, gr, gb))


def _bwd_recurrence_numpy(g_ys, g_h, g_c, g_cs, g_gates, ys, cs, gates, h0, c0, r):
    """Pre-activation gate cotangents of every step, and those of h0 and c0 (NumPy).

    why: one GEMM and a few in-place ufuncs per step on preallocated buffers that
    stay in cache (computing the activation derivatives for the whole sequence up
    front measured slower: it streams several sequence-sized arrays through memory);
    the weight gradients are left to one GEMM each over all steps."""
    t, n, hid = cs.shape
    dt = gates.dtype
    # why: the cotangents of the internal outputs are nearly always the engine's zeros
    # (known without a scan of 16 MB per call for a 256-unit, 50-step, batch-64 LSTM)
    extra_cs = not is_known_zero(g_cs) and bool(g_cs.any())
    extra_gates = not is_known_zero(g_gates) and bool(g_gates.any())
    dpre_all = POOL.empty((t, n, 4, hid), dt)
    r = r.astype(dt, copy=False)
    dh = np.empty((n, hid), dtype=dt)
    dc = np.empty((n, hid), dtype=dt)
    tc = np.empty((n, hid), dtype=dt)
    tmp = np.empty((n, hid), dtype=dt)
    act = np.empty((n, 4, hid), dtype=dt)
    dh_next = g_h.astype(dt, copy=True)
    dc_next = g_c.astype(dt, copy=True)

    bufs = (dpre_all, r, dh, dc, tc, tmp, act, dh_next, dc_next)
    seqs = (g_ys, g_cs, g_gates, cs, gates, c0)

    def loop(lo, hi):  # loop iterations lo..hi-1: steps t-1-lo down to t-hi
        _bwd_steps(range(t - 1 - lo, t - 1 - hi, -1), seqs, bufs, extra_cs, extra_gates)

    _run_steps(loop, ("bwd", n, hid, dt), t)
    return dpre_all.reshape(t, n, 4 * hid), dh_next, dc_next


def _bwd_steps(steps, seqs, bufs, extra_cs, extra_gates):
    g_ys, g_cs, g_gates, cs, gates, c0 = seqs
    dpre_all, r, dh, dc, tc, tmp, act, dh_next, dc_next = bufs
    n, hid = dh.shape
    for step in steps:
        gt = gates[step].reshape(n, 4, hid)
        i, f, gc, o = gt[:, 0], gt[:, 1], gt[:, 2], gt[:, 3]
        c_prev = cs[step - 1] if step else c0
        np.add(g_ys[step], dh_next, out=dh)
        # dc = dc_next (+ g_cs) + dh * o * (1 - tanh(c)^2)
        np.tanh(cs[step], out=tc)
        np.multiply(tc, tc, out=tmp)
        np.subtract(1, tmp, out=tmp)
        tmp *= o
        tmp *= dh
        np.add(dc_next, tmp, out=dc)
        if extra_cs:
            dc += g_cs[step]
        # activation derivatives from the activated gates: s (1 - s), and 1 - g^2
        np.subtract(1, gt, out=act)
        act *= gt
        ag = act[:, 2]
        np.multiply(gc, gc, out=ag)
        np.subtract(1, ag, out=ag)
        dp = dpre_all[step]
        np.multiply(dc, gc, out=dp[:, 0])
        np.multiply(dc, c_prev, out=dp[:, 1])
        np.multiply(dc, i, out=dp[:, 2])
        np.multiply(dh, tc, out=dp[:, 3])
        if extra_gates:
            dp += g_gates[step].reshape(n, 4, hid)
        dp *= act
        np.multiply(dc, f, out=dc_next)
        np.matmul(dp.reshape(n, 4 * hid), r, out=dh_next)


def _weight_grads(dpre_all, xs, ys, h0, w, dh0, dc0, need_x=True):
    """Input, state and weight cotangents from the gate cotangents of all steps:
    one GEMM each (the recurrent-weight one splits off the h0 step, no concatenation)."""
    t, n, c = xs.shape
    hid = ys.shape[2]
    flat = dpre_all.reshape(t * n, 4 * hid)
    gx = None
    if need_x:
        gx = POOL.empty((t, n, c), np.result_type(flat, w))
        np.matmul(flat, w, out=gx.reshape(t * n, c))
    # why: one GEMM for both weight gradients over [x_t | h_{t-1}] rows: the 4H-wide
    # gate cotangents (the big operand) are read and packed once, not three times
    gw_dt, gr_dt = np.result_type(flat, xs), np.result_type(flat, h0, ys)
    rows = POOL.empty((t, n, c + hid), np.result_type(gw_dt, gr_dt))
    rows[:, :, :c] = xs
    rows[0, :, c:] = h0
    rows[1:, :, c:] = ys[:-1]
    both = POOL.empty((4 * hid, c + hid), np.result_type(flat, rows))
    np.matmul(flat.T, rows.reshape(t * n, c + hid), out=both)
    gw = np.array(both[:, :c], dtype=gw_dt)
    gr = np.array(both[:, c:], dtype=gr_dt)
    gb = column_sum(flat) if flat.dtype.kind == "f" else flat.sum(axis=0)
    return gx, dh0, dc0, gw, gr, gb


def _vjp_traced(g, ans, xs, h0, c0, w, r, b):
    g_ys, g_h, g_c, g_cs, g_gates = g
    ys, _, _, cs, gates = ans
    t, n, c = xs.shape
    hid = r.shape[1]
    dh_next, dc_next = g_h, g_c
    dpres = [None] * t
    for step in range(t - 1, -1, -1):
        dh = g_ys[step] + dh_next
        dc = dc_next + g_cs[step]
        c_prev = cs[step - 1] if step else c0
        gt = gates[step]
        i, f, gc, o = (gt[:, j * hid : (j + 1) * hid] for j in range(4))
        tc = tanh(cs[step])
        dc = dc + dh * o * (1 - tc * tc)
        dact = concatenate([dc * gc, dc * c_prev, dc * i, dh * tc], axis=1) + g_gates[step]
        act = concatenate([i * (1 - i), f * (1 - f), 1 - gc * gc, o * (1 - o)], axis=1)
        dpre = dact * act
        dpres[step] = dpre
        dc_next = dc * f
        dh_next = matmul_t(dpre, r)
    flat = reshape(stack(dpres, axis=0), (t * n, 4 * hid))
    hprev = reshape(concatenate([reshape(h0, (1, n, hid)), ys[: t - 1]], axis=0), (t * n, hid))
    gx = reshape(matmul_t(flat, w), (t, n, c))
    gw = matmul_t(flat, reshape(xs, (t * n, c)), True, False)
    gr = matmul_t(flat, hprev, True, False)
    gb = gsum(flat, axis=0)
    return gx, dh_next, dc_next, gw, gr, gb


def _vjp(g, ans, xs, h0, c0, w, r, b, needs=None):
    if tape.FRAME.get().recording:
        return _vjp_traced(g, ans, xs, h0, c0, w, r, b)
    # why: the input sequence is often a traced argument nobody asked the gradient of
    return _vjp_raw(g, ans, xs, h0, c0, w, r, b, need_x=needs is None or needs[0])


_LSTM = Primitive(
    "lstm", _fwd, _vjp, save=(0, 1, 2, 3, 4), save_ans=True, multiple_outputs=True, needs=True
)


def lstm_sequence(xs, h0, c0, w, r, b):
    """``xs[T, N, C]``, states ``[N, H]``, MATLAB weights; returns ``(ys[T, N, H], h, c)``."""
    dt = np.result_type(xs.dtype, w.dtype)
    ys, h, c, _, _ = bind(_LSTM, (xs, h0, c0, w, r, b))
    del dt
    return ys, h, c

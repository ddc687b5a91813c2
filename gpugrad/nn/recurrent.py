"""The whole-sequence LSTM primitive.

Forward: the input projection of all steps in ONE GEMM, then the recurrence (the
fused ``lstm_cell_fwd`` kernel per step on cuda/emu, NumPy on cpu). The primitive
also outputs every cell state and the activated gates, which its VJP reads.

Backward is one whole-sequence VJP: on raw arrays (``lstm_cell_bwd`` kernels) when
nothing is recorded, and written with gpugrad ops when recording
(``enable_higher_derivatives``), so higher derivatives flow through it. Because the
saved cell states and gates are outputs of the node, the VJP also takes cotangents
for them (they are nonzero only in higher-order passes).
"""

from __future__ import annotations

import numpy as np

from .. import tape
from ..ops.core import _STATE, Primitive, bind, make
from ..ops.elementwise import tanh
from ..ops.heavy import kernels_for, matmul_t
from ..ops.reduce import sum as gsum
from ..ops.shape import concatenate, reshape, stack


def _xp():
    return _STATE["xp"]


def _sigmoid(v):
    xp = _xp()
    return 0.5 * (xp.tanh(0.5 * v) + 1)  # why: stable for large |v|


def _fwd(xs, h0, c0, w, r, b):
    xp = _xp()
    t, n, c = xs.shape
    hid = r.shape[1]
    k = kernels_for(xs, h0, c0, w, r, b)
    flat = xs.reshape(t * n, c)
    if k is not None:
        proj = k.matmul(flat, w, trans_b=True, bias=b)
    else:
        proj = flat @ w.T
        proj += b
    proj = proj.reshape(t, n, 4 * hid)
    ys = xp.empty((t, n, hid), dtype=proj.dtype)
    cs = xp.empty((t, n, hid), dtype=proj.dtype)
    gates = xp.empty((t, n, 4 * hid), dtype=proj.dtype)
    h, cell = h0, c0
    for step in range(t):
        if k is not None:
            pre = k.matmul(h, r, trans_b=True, bias=None) + proj[step]
            h, cell, gt = k.lstm_cell_fwd(pre, cell)
            gates[step] = gt
        else:
            pre = h @ r.T
            pre += proj[step]
            gt = gates[step]
            gt[:, : 2 * hid] = _sigmoid(pre[:, : 2 * hid])
            gt[:, 2 * hid : 3 * hid] = xp.tanh(pre[:, 2 * hid : 3 * hid])
            gt[:, 3 * hid :] = _sigmoid(pre[:, 3 * hid :])
            cell = gt[:, hid : 2 * hid] * cell + gt[:, :hid] * gt[:, 2 * hid : 3 * hid]
            h = gt[:, 3 * hid :] * xp.tanh(cell)
        ys[step] = h
        cs[step] = cell
    return ys, ys[-1].copy(), cs[-1].copy(), cs, gates


def _act_grad(gates, hid):
    """Derivative of each gate activation, from the activated gate values (raw)."""
    out = gates * (1 - gates)
    gc = gates[..., 2 * hid : 3 * hid]
    out[..., 2 * hid : 3 * hid] = 1 - gc * gc
    return out


def _vjp_raw(g, ans, xs, h0, c0, w, r, b):
    xp = _xp()
    g_ys, g_h, g_c, g_cs, g_gates = (x._data for x in g)
    ys, _, _, cs, gates = (a._data for a in ans)
    xs, h0, c0, w, r = xs._data, h0._data, c0._data, w._data, r._data
    t, n, c = xs.shape
    hid = r.shape[1]
    k = kernels_for(xs, h0, c0, w, r)
    extra_gates = bool(xp.any(g_gates))
    dpre_all = xp.empty((t, n, 4 * hid), dtype=ys.dtype)
    dh_next = g_h.copy()
    dc_next = g_c.copy()
    for step in range(t - 1, -1, -1):
        dh = g_ys[step] + dh_next
        dc = dc_next + g_cs[step]
        c_prev = cs[step - 1] if step else c0
        gt = gates[step]
        if k is not None:
            dpre, dc_next = k.lstm_cell_bwd(dh, dc, gt, c_prev, cs[step])
        else:
            tc = xp.tanh(cs[step])
            i, f, gc, o = (gt[:, j * hid : (j + 1) * hid] for j in range(4))
            dc = dc + dh * o * (1 - tc * tc)
            dact = xp.concatenate([dc * gc, dc * c_prev, dc * i, dh * tc], axis=1)
            dpre = dact * _act_grad(gt, hid)
            dc_next = dc * f
        if extra_gates:
            dpre = dpre + g_gates[step] * _act_grad(gt, hid)
        dpre_all[step] = dpre
        dh_next = dpre @ r
    flat = dpre_all.reshape(t * n, 4 * hid)
    hprev = xp.concatenate([h0[None], ys[:-1]], axis=0).reshape(t * n, hid)
    gx = (flat @ w).reshape(t, n, c)
    gw = flat.T @ xs.reshape(t * n, c)
    gr = flat.T @ hprev
    gb = flat.sum(axis=0)
    return tuple(make(v) for v in (gx, dh_next, dc_next, gw, gr, gb))


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


def _vjp(g, ans, xs, h0, c0, w, r, b):
    if tape.FRAME.get().recording:
        return _vjp_traced(g, ans, xs, h0, c0, w, r, b)
    return _vjp_raw(g, ans, xs, h0, c0, w, r, b)


_LSTM = Primitive("lstm", _fwd, _vjp, save=(0, 1, 2, 3, 4), save_ans=True, multiple_outputs=True)


def lstm_sequence(xs, h0, c0, w, r, b):
    """``xs[T, N, C]``, states ``[N, H]``, MATLAB weights; returns ``(ys[T, N, H], h, c)``."""
    dt = np.result_type(xs.dtype, w.dtype)
    ys, h, c, _, _ = bind(_LSTM, (xs, h0, c0, w, r, b))
    del dt
    return ys, h, c

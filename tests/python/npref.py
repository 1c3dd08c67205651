"""An independent NumPy attention (float64), written from the conventions of
include/flashlane/problem.h, to check flashlane against. Forward and backward, bshd and varlen.

Attention sinks (learnable_sink [h], gpt-oss): the sink logit of head h is one more column of
every row's scores, appended after the mask, softcap and scale (it is neither scaled nor capped)
and dropped after the softmax, as gpt-oss's eager attention computes it. Its gradient is the
sink column of dS: -sum_i p_sink_i * sum_d dout_id * out_id."""

import numpy as np


def visible(sq, sk, mask, window=(-1, -1)):
    """Boolean [sq, sk]: which keys each query sees (sk = keys actually used)."""
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    diag = i if mask == "causal" else i + sk - sq
    left, right = window
    if mask != "no_mask":
        right = 0
    ok = np.ones((sq, sk), dtype=bool)
    if left >= 0:
        ok &= j >= diag - left
    if right >= 0:
        ok &= j <= diag + right
    return ok


def _one(q, k, v, scale, mask, window, softcap, dout=None, sink=None):
    """q [sq, h, d], k/v [sk, hk, d], sink None or [h]. Returns out [sq, h, dv], lse [h, sq]
    (and dq, dk, dv, dsink [h])."""
    q = q.astype(np.float64)
    k = k.astype(np.float64)
    v = v.astype(np.float64)
    sq, h, _ = q.shape
    sk, hk, _ = k.shape
    g = h // hk
    ok = visible(sq, sk, mask, window)
    out = np.zeros((sq, h, v.shape[-1]))
    lse = np.full((h, sq), -np.inf)
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    dsink = np.zeros(h)
    for hh in range(h):
        kh, vh = k[:, hh // g], v[:, hh // g]
        raw = scale * (q[:, hh] @ kh.T)
        s = softcap * np.tanh(raw / softcap) if softcap > 0 else raw
        s = np.where(ok, s, -np.inf)
        if sink is not None:
            # The sink column: every row has it, so every row has a finite maximum.
            cols = np.concatenate([s, np.full((sq, 1), float(sink[hh]))], axis=1)
            m = cols.max(axis=1, keepdims=True)
            e = np.exp(cols - m)
            pe = e / e.sum(axis=1, keepdims=True)
            p, p_sink = pe[:, :-1], pe[:, -1]
            out[:, hh] = p @ vh
            lse[hh] = m[:, 0] + np.log(e.sum(axis=1))
        else:
            m = s.max(axis=1, keepdims=True, initial=-np.inf)
            rows = np.isfinite(m[:, 0])
            m = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(s - m)
            z = p.sum(axis=1, keepdims=True)
            p = np.where(rows[:, None], p / np.where(z > 0, z, 1.0), 0.0)
            out[:, hh] = p @ vh
            lse[hh] = np.where(rows, m[:, 0] + np.log(np.where(rows, z[:, 0], 1.0)), -np.inf)
        if dout is not None:
            do = dout[:, hh].astype(np.float64)
            dv[:, hh // g] += p.T @ do
            dp = do @ vh.T
            delta = (do * out[:, hh]).sum(axis=1, keepdims=True)
            ds = p * (dp - delta)
            if sink is not None:
                dsink[hh] = -(p_sink * delta[:, 0]).sum()  # dP of the sink column is 0
            if softcap > 0:
                ds = ds * (1.0 - np.tanh(raw / softcap) ** 2)
            dq[:, hh] = scale * ds @ kh
            dk[:, hh // g] += scale * ds.T @ q[:, hh]
    if dout is None:
        return out, lse
    return out, lse, dq, dk, dv, dsink


def attention(q, k, v, *, mask="no_mask", window=(-1, -1), softcap=0.0, scale=None,
              seqused_k=None, dout=None, sink=None):
    """bshd: q [b, sq, h, d]. Returns out [b, sq, h, dv], lse [b, h, sq] (+ dq, dk, dv, and
    with a sink [h] dsink [h] summed over the batch)."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    sink = None if sink is None else np.asarray(sink, dtype=np.float64)
    res = []
    for b in range(q.shape[0]):
        sk = k.shape[1] if seqused_k is None else int(seqused_k[b])
        res.append(_one(q[b], k[b, :sk], v[b, :sk], scale, mask, window, softcap,
                        None if dout is None else dout[b], sink))
    out = np.stack([r[0] for r in res])
    lse = np.stack([r[1] for r in res])
    if dout is None:
        return out, lse
    dq = np.stack([r[2] for r in res])
    dk = np.zeros(k.shape)
    dv = np.zeros(v.shape)
    for b, r in enumerate(res):
        n = r[3].shape[0]
        dk[b, :n] = r[3]
        dv[b, :n] = r[4]
    if sink is not None:
        return out, lse, dq, dk, dv, sum(r[5] for r in res)
    return out, lse, dq, dk, dv


def attention_varlen(q, k, v, cu_q, cu_k, *, mask="no_mask", window=(-1, -1), softcap=0.0,
                     scale=None, seqused_k=None, dout=None, sink=None):
    """varlen: q [total_q, h, d]. Returns out [total_q, h, dv], lse [h, total_q] (+ grads, and
    with a sink [h] dsink [h])."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    sink = None if sink is None else np.asarray(sink, dtype=np.float64)
    dsink = np.zeros(q.shape[1])
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    lse = np.full((q.shape[1], q.shape[0]), -np.inf)
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        if seqused_k is not None:
            k1 = k0 + int(seqused_k[b])
        r = _one(q[q0:q1], k[k0:k1], v[k0:k1], scale, mask, window, softcap,
                 None if dout is None else dout[q0:q1], sink)
        out[q0:q1] = r[0]
        lse[:, q0:q1] = r[1]
        if dout is not None:
            dq[q0:q1], dk[k0:k1], dv[k0:k1] = r[2], r[3], r[4]
            dsink += r[5]
    if dout is None:
        return out, lse
    if sink is not None:
        return out, lse, dq, dk, dv, dsink
    return out, lse, dq, dk, dv

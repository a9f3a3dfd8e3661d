"""HSTU attention: seqmix CUDA vs the Triton peers, in one process on the same tensors.

Peers (git-ignored checkouts under peers/): generative-recommenders `triton_hstu_mha` and
TorchEasyRec `tzrec.ops._triton.triton_hstu_mha`. seqmix is reached through the C ABI of
bench/hstu_capi.cpp (ctypes) until the torch extension lands.

Shapes (DESIGN.md / issue 4): B = 32 jagged, max_len 1024 / 4096 / 8192, lengths "uniform"
(U(0.4, 1) * max_len) or "skewed" (Beta(0.7, 0.3) * max_len, most mass near 0 and 1), both
~70% mean fill; H = 4, 8; D = 128; bf16; num_targets U{1..64}; masks: causal + targets, and SLA
(k1 = 256, k2 = 32) + targets. The Triton peers have no SLA (TorchEasyRec's SLA func tensor only
feeds its CUTLASS and PyTorch paths), so SLA rows time them on the nearest mask they have, a
local window max_attn_len = k1 with targets ("peer_mask": "window256"); the SLA goal is ours vs
our dense time scaled by the attended-pair ratio.

TFLOP/s count 4 D flops per attended (i, j) pair forward and 10 D backward (FlashAttention's
convention; recomputation is not counted). Peak memory is torch's allocator peak above the
inputs (our outputs are torch-allocated too).

Peer autotuning is capped to a few configs per kernel (PEER_MAX_CONFIGS, default 4) so the first
compile fits in one device run; the configs are chosen from the peers' own lists.

Usage (device): python3 bench/hstu_vs_peers.py --lib build-cuda/libseqmix_hstu_capi.so \
    --peers ../../peers --out results.json [--budget-s 300] [--quick]
"""

import argparse
import ctypes
import json
import math
import os
import sys
import time
import types

import torch


def load_peer_package(name, root):
    # The packages' __init__ pull optional heavy dependencies; the ops modules need none of it.
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(root, name)]
    sys.modules[name] = module


def cap_autotune(module, preferences, limit, log):
    import triton

    for name, obj in vars(module).items():
        if not isinstance(obj, triton.runtime.autotuner.Autotuner):
            continue
        configs = [c for c in obj.configs if not c.kwargs.get("USE_TLX", False)]

        def key(c):
            k = (c.kwargs.get("BLOCK_M"), c.kwargs.get("BLOCK_N"), c.num_warps, c.num_stages)
            return preferences.index(k) if k in preferences else len(preferences)

        chosen = sorted(configs, key=key)[:limit]
        obj.configs = chosen
        log(f"  {module.__name__}.{name}: {len(chosen)} of {len(configs)} configs: "
            + ", ".join(f"M{c.kwargs.get('BLOCK_M')}N{c.kwargs.get('BLOCK_N')}w{c.num_warps}s{c.num_stages}"
                        for c in chosen))


FWD_PREFERENCES = [(128, 64, 8, 2), (128, 64, 4, 2), (64, 64, 4, 2), (128, 32, 4, 2), (64, 32, 4, 2)]
BWD_PREFERENCES = [(32, 128, 8, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 128, 4, 2), (64, 64, 4, 2),
                   (32, 64, 8, 2), (32, 32, 4, 2)]


class Seqmix:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        i64, p, i32, f64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
        common = [p, p, p, p, i32, p, i32, i64, i64, i64, i64, i32, i64, f64, i64, i64, i64, i64, i64]
        self.lib.seqmix_hstu_fwd.argtypes = common + [p, p]
        self.lib.seqmix_hstu_bwd.argtypes = common + [p, p, p, p, p]
        self.lib.seqmix_hstu_last_error.restype = ctypes.c_char_p

    def _common(self, q, k, v, seq_offsets, num_targets, max_seq_len, alpha, sla_k1, sla_k2, max_attn_len=0):
        total, heads, dim = q.shape
        return [q.data_ptr(), k.data_ptr(), v.data_ptr(), seq_offsets.data_ptr(),
                int(seq_offsets.dtype == torch.int64), num_targets.data_ptr() if num_targets is not None else None,
                int(num_targets is not None and num_targets.dtype == torch.int64), seq_offsets.numel() - 1, total,
                heads, dim, 0 if q.dtype == torch.bfloat16 else 1, max_seq_len, alpha, -1, 0, max_attn_len,
                sla_k1, sla_k2]

    def _check(self, rc):
        if rc != 0:
            raise RuntimeError(self.lib.seqmix_hstu_last_error().decode())

    def fwd(self, q, k, v, seq_offsets, num_targets, max_seq_len, alpha, sla_k1=0, sla_k2=0):
        out = torch.empty_like(q)
        stream = torch.cuda.current_stream().cuda_stream
        self._check(self.lib.seqmix_hstu_fwd(*self._common(q, k, v, seq_offsets, num_targets, max_seq_len, alpha,
                                                           sla_k1, sla_k2), out.data_ptr(), stream))
        return out

    def bwd(self, q, k, v, seq_offsets, num_targets, max_seq_len, alpha, dout, sla_k1=0, sla_k2=0):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        stream = torch.cuda.current_stream().cuda_stream
        self._check(self.lib.seqmix_hstu_bwd(*self._common(q, k, v, seq_offsets, num_targets, max_seq_len, alpha,
                                                           sla_k1, sla_k2), dout.data_ptr(), dq.data_ptr(),
                                             dk.data_ptr(), dv.data_ptr(), stream))
        return dq, dk, dv


def lengths_of(dist, batch, max_len, gen):
    if dist == "uniform":
        x = torch.rand(batch, generator=gen) * 0.6 + 0.4
    else:
        x = torch.distributions.Beta(0.7, 0.3).sample((batch,))
    return (x * max_len).ceil().clamp(1, max_len).to(torch.int64)


def attended_pairs(lengths, targets, sla_k1=0, sla_k2=0):
    pairs = 0
    for n, t in zip(lengths.tolist(), targets.tolist()):
        h = n - t
        if sla_k1 == 0 and sla_k2 == 0:
            pairs += h * (h + 1) // 2 + t * (h + 1)  # causal history; targets see history + themselves
            continue
        i = torch.arange(h, dtype=torch.int64)
        prefix = torch.clamp(i + 1, max=sla_k2)
        window = (i + 1 - torch.clamp(i - sla_k1 + 1, min=sla_k2)).clamp(min=0)
        pairs += int((prefix + window).sum()) + t * h  # SLA targets see the history only
    return pairs


def timed(fn, budget_ms=200.0, max_iters=20):
    fn()  # warm-up (peers autotune and compile here)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = start.elapsed_time(end)
    iters = int(max(3, min(max_iters, budget_ms / max(once, 1e-3))))
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--peers", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=300.0)
    ap.add_argument("--quick", action="store_true", help="max_len 1024 only")
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    t_start = time.time()
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    device = torch.device("cuda")
    ours = Seqmix(args.lib)
    peers = {}
    if not args.no_peers:
        limit = int(os.environ.get("PEER_MAX_CONFIGS", "4"))
        try:
            load_peer_package("generative_recommenders", os.path.join(args.peers, "gr"))
            import generative_recommenders.ops.triton.triton_hstu_attention as gr_mod

            cap_autotune(gr_mod, FWD_PREFERENCES + BWD_PREFERENCES, limit, log)
            peers["gr"] = lambda q, k, v, so, nt, n, a, w: gr_mod.triton_hstu_mha(
                n, a, q, k, v, so, num_targets=nt, max_attn_len=w)
        except Exception as e:  # report and go on with the other peer
            log(f"gr unavailable: {type(e).__name__}: {e}")
        try:
            load_peer_package("tzrec", os.path.join(args.peers, "tzrec"))
            import tzrec.ops._triton.triton_hstu_attention as tz_mod

            cap_autotune(tz_mod, FWD_PREFERENCES + BWD_PREFERENCES, limit, log)
            peers["tzrec"] = lambda q, k, v, so, nt, n, a, w: tz_mod.triton_hstu_mha(
                n, a, q, k, v, so, causal=True, num_targets=nt, max_attn_len=w)
        except Exception as e:
            log(f"tzrec unavailable: {type(e).__name__}: {e}")

    batch, dim, sla_k1, sla_k2 = 32, 128, 256, 32
    alpha = 1.0 / math.sqrt(dim)
    max_lens = [1024] if args.quick else [1024, 4096, 8192]
    rows = []
    dense_ms = {}

    def write_result():  # after every row, so a run cut short still leaves its rows
        result = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(),
                  "torch": torch.__version__, "peer_max_configs": os.environ.get("PEER_MAX_CONFIGS", "4"),
                  "bf16_matmul_tflops_reference": 787, "rows": rows, "elapsed_s": round(time.time() - t_start, 1)}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    for max_len in max_lens:
        for heads in (4, 8):
            for dist in ("uniform", "skewed"):
                for mask in ("causal_targets", "sla_targets"):
                    if time.time() - t_start > args.budget_s:
                        log(f"time guard: skipping max_len {max_len} H {heads} {dist} {mask}")
                        continue
                    gen = torch.Generator().manual_seed(max_len * 31 + heads * 7 + (dist == "skewed"))
                    lengths = lengths_of(dist, batch, max_len, gen)
                    targets = torch.minimum(torch.randint(1, 65, (batch,), generator=gen), lengths)
                    offsets = torch.zeros(batch + 1, dtype=torch.int64)
                    offsets[1:] = torch.cumsum(lengths, 0)
                    total = int(offsets[-1])
                    so, nt = offsets.to(device), targets.to(device)
                    q, k, v, dout = (torch.randn(total, heads, dim, device=device, dtype=torch.bfloat16)
                                     for _ in range(4))
                    sla = mask == "sla_targets"
                    k1, k2 = (sla_k1, sla_k2) if sla else (0, 0)
                    pairs = attended_pairs(lengths, targets, k1, k2) * heads
                    row = {"op": "hstu_attention", "B": batch, "max_seq_len": max_len, "H": heads, "D": dim,
                           "lengths": dist, "mask": mask, "tokens": total, "attended_pairs": pairs,
                           "dtype": "bf16"}

                    def ours_fwd():
                        return ours.fwd(q, k, v, so, nt, max_len, alpha, k1, k2)

                    def ours_fwd_bwd():
                        ours.fwd(q, k, v, so, nt, max_len, alpha, k1, k2)
                        return ours.bwd(q, k, v, so, nt, max_len, alpha, dout, k1, k2)

                    results = {"seqmix": (ours_fwd, ours_fwd_bwd)}
                    for name, fn in peers.items():
                        window = sla_k1 if sla else 0
                        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

                        def peer_fwd(fn=fn, window=window):
                            with torch.no_grad():
                                return fn(q, k, v, so, nt, max_len, alpha, window)

                        def peer_fwd_bwd(fn=fn, window=window, qg=qg, kg=kg, vg=vg):
                            out = fn(qg, kg, vg, so, nt, max_len, alpha, window)
                            return torch.autograd.grad(out, (qg, kg, vg), dout)

                        results[name] = (peer_fwd, peer_fwd_bwd)
                    if sla and peers:
                        row["peer_mask"] = f"window{sla_k1}"
                    for name, (f, fb) in results.items():
                        try:
                            fwd_ms = timed(f)
                            fb_ms = timed(fb)
                            row[name] = {"fwd_ms": round(fwd_ms, 4), "fwd_bwd_ms": round(fb_ms, 4),
                                         "fwd_peak_mb": round(peak_mb(f), 1), "fwd_bwd_peak_mb": round(peak_mb(fb), 1)}
                            if name == "seqmix":
                                row[name]["fwd_tflops"] = round(4 * dim * pairs / (fwd_ms * 1e9), 1)
                                row[name]["fwd_bwd_tflops"] = round(14 * dim * pairs / (fb_ms * 1e9), 1)
                        except Exception as e:
                            row[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                        torch.cuda.empty_cache()
                    # Parity with the peers on the dense mask (same inputs), first shape of each size.
                    if not sla and heads == 4 and dist == "uniform":
                        out = ours_fwd()
                        dq, dk, dv = ours.bwd(q, k, v, so, nt, max_len, alpha, dout)
                        for name, fn in peers.items():
                            try:
                                qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                                ref = fn(qg, kg, vg, so, nt, max_len, alpha, 0)
                                g = torch.autograd.grad(ref, (qg, kg, vg), dout)
                                row[f"parity_vs_{name}"] = {"out": rel_err(out, ref), "dq": rel_err(dq, g[0]),
                                                            "dk": rel_err(dk, g[1]), "dv": rel_err(dv, g[2])}
                            except Exception as e:
                                row[f"parity_vs_{name}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    ok = [r for n, r in row.items() if n in peers and isinstance(r, dict) and "fwd_ms" in r]
                    if ok and "fwd_ms" in row["seqmix"]:
                        row["speedup_fwd_vs_fastest_peer"] = round(min(r["fwd_ms"] for r in ok) / row["seqmix"]["fwd_ms"], 3)
                        row["speedup_fwd_bwd_vs_fastest_peer"] = round(
                            min(r["fwd_bwd_ms"] for r in ok) / row["seqmix"]["fwd_bwd_ms"], 3)
                    key = (max_len, heads, dist)
                    if "fwd_ms" in row["seqmix"]:
                        if not sla:
                            dense_ms[key] = (row["seqmix"]["fwd_ms"], row["seqmix"]["fwd_bwd_ms"], pairs)
                        elif key in dense_ms:
                            d_fwd, d_fb, d_pairs = dense_ms[key]
                            row["sla_time_over_pair_prediction_fwd"] = round(
                                row["seqmix"]["fwd_ms"] / (d_fwd * pairs / d_pairs), 3)
                            row["sla_time_over_pair_prediction_fwd_bwd"] = round(
                                row["seqmix"]["fwd_bwd_ms"] / (d_fb * pairs / d_pairs), 3)
                    rows.append(row)
                    log(json.dumps(row))
                    write_result()
                    del q, k, v, dout
                    torch.cuda.empty_cache()
    write_result()
    log(f"done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()

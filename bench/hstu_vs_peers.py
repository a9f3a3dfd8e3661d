"""HSTU attention: seqmix CUDA vs the Triton peers on the same inputs, in one device run.

Peers (git-ignored checkouts under peers/): generative-recommenders `triton_hstu_mha`,
TorchEasyRec `tzrec.ops._triton.triton_hstu_mha`, and fbgemm_gpu's CUTLASS Hopper HSTU
(`hstu_attn_varlen_func`) when its extension was built into peers/fbgemm_hstu (--impl fbgemm: the
package dir fbgemm_gpu/experimental/hstu with hstu/fbgemm_gpu_experimental_hstu.so; built off the
device from a fetched snapshot, never committed). seqmix is reached through the C ABI of
bench/hstu_capi.cpp (ctypes) until the torch extension lands. Each implementation runs in its own
process (--impl) on inputs seeded identically, so a crash loses one column, not the run; the
peer processes also run ours on their first dense shape of each size for a parity check; --merge
joins the columns into one row per shape.

Shapes (DESIGN.md / issue 4): B = 32 jagged, max_len 1024 / 4096 / 8192, lengths "uniform"
(U(0.4, 1) * max_len) or "skewed" (Beta(0.7, 0.3) * max_len, most mass near 0 and 1), both
~70% mean fill; H = 4, 8; D = 128; bf16; num_targets U{1..64}; masks: causal + targets, and SLA
(k1 = 256, k2 = 32) + targets. The Triton peers have no SLA (TorchEasyRec's SLA func tensor only
feeds its CUTLASS and PyTorch paths), so SLA rows time them on the nearest mask they have, a
local window max_attn_len = k1 with targets ("peer_mask": "window256"); the SLA goal is ours vs
our dense time scaled by the attended-pair ratio. fbgemm's local window cannot be combined with
targets (its wrapper refuses num_targets unless window_size == (-1, 0)), so its SLA proxy is the
window alone ("window256").

FP8 rows (--quant-modes, seqmix and fbgemm only; forward only, quantizing included, as fbgemm's
autograd quantizes in its forward): mask "causal_targets_fp8_m<mode>" at --fp8-max-lens; merged
rows carry our FP8 forward over our bf16 forward on the same shape (issue 4's FP8 goal) and
fbgemm's FP8 forward over ours.

TFLOP/s count 4 D flops per attended (i, j) pair forward and 10 D backward (FlashAttention's
convention; recomputation is not counted). Peak memory is torch's allocator peak above the
inputs (our outputs are torch-allocated too).

Peer autotuning is capped to a few configs per kernel (PEER_MAX_CONFIGS, default 4) so the first
compile fits in one device run; the configs are chosen from the peers' own lists.

Usage (device, see scripts/hstu_device.sh):
  python3 bench/hstu_vs_peers.py --impl seqmix|gr|tzrec|fbgemm --lib build-cuda/libseqmix_hstu_capi.so \
      --peers ../../peers --out IMPL.json [--budget-s 150] [--max-lens 1024 4096 8192] \
      [--quant-modes 1 3 --fp8-max-lens 8192]
  python3 bench/hstu_vs_peers.py --merge seqmix.json gr.json tzrec.json fbgemm.json --out hstu_vs_peers.json
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


def cap_autotune(module, limit, log):
    """Keeps `limit` configs per kernel from the peer's own list: no TLX (needs TMA descriptors), no
    SEQUENCE_PARALLEL backward (atomics and a lock buffer). On this stack (triton 3.6, torch 2.11) both
    peers' backward died with an illegal address (device runs 2-3, with num_stages 2 and 1, BLOCK_N
    128 configs eligible; cf. triton#10573), so the backward keeps BLOCK_N <= 64 configs, and
    PEER_BWD_SAFE=1 (the retry) keeps only their smallest one."""
    import triton

    safe = os.environ.get("PEER_BWD_SAFE") == "1"
    for name, obj in vars(module).items():
        if not isinstance(obj, triton.runtime.autotuner.Autotuner):
            continue
        available = len(obj.configs)
        configs = [c for c in obj.configs
                   if not c.kwargs.get("USE_TLX", False) and not c.kwargs.get("SEQUENCE_PARALLEL", False)]
        backward = "SEQUENCE_PARALLEL" in obj.configs[0].kwargs
        if backward:
            configs = [c for c in configs if c.kwargs["BLOCK_N"] <= 64 and c.kwargs.get("UNROLL", 1) == 1]
        preferences = (BWD_SAFE_PREFERENCES if safe else BWD_PREFERENCES) if backward else FWD_PREFERENCES

        def key(c):
            k = (c.kwargs.get("BLOCK_M"), c.kwargs.get("BLOCK_N"), c.num_warps, c.num_stages)
            return preferences.index(k) if k in preferences else len(preferences)

        chosen = sorted(configs, key=key)[: (1 if safe and backward else limit)]
        if os.environ.get("PEER_NUM_STAGES"):
            for c in chosen:
                c.num_stages = int(os.environ["PEER_NUM_STAGES"])
        obj.configs = chosen
        log(f"  {module.__name__}.{name}: {len(chosen)} of {available} configs: "
            + ", ".join(f"M{c.kwargs.get('BLOCK_M')}N{c.kwargs.get('BLOCK_N')}w{c.num_warps}s{c.num_stages}"
                        for c in chosen))


FWD_PREFERENCES = [(128, 64, 8, 2), (128, 64, 4, 2), (64, 64, 4, 2), (128, 32, 4, 2), (64, 32, 4, 2)]
BWD_PREFERENCES = [(32, 64, 4, 2), (64, 64, 4, 2), (32, 64, 8, 2), (32, 32, 4, 2), (64, 64, 8, 2)]
BWD_SAFE_PREFERENCES = [(16, 32, 2, 2), (16, 32, 4, 2), (32, 32, 4, 1), (32, 32, 4, 2)]


class Seqmix:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        i64, p, i32, f64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_double
        common = [p, p, p, p, i32, p, i32, i64, i64, i64, i64, i32, i64, f64, i64, i64, i64, i64, i64, i64]
        self.lib.seqmix_hstu_fwd.argtypes = common + [p, p]
        self.lib.seqmix_hstu_bwd.argtypes = common + [p, p, p, p, p]
        self.lib.seqmix_hstu_last_error.restype = ctypes.c_char_p

    def _common(self, q, k, v, seq_offsets, num_targets, max_seq_len, alpha, sla_k1, sla_k2, quant_mode=-1):
        total, heads, dim = q.shape
        return [q.data_ptr(), k.data_ptr(), v.data_ptr(), seq_offsets.data_ptr(),
                int(seq_offsets.dtype == torch.int64), num_targets.data_ptr() if num_targets is not None else None,
                int(num_targets is not None and num_targets.dtype == torch.int64), seq_offsets.numel() - 1, total,
                heads, dim, 0 if q.dtype == torch.bfloat16 else 1, max_seq_len, alpha, -1, 0, 0,
                sla_k1, sla_k2, quant_mode]

    def _check(self, rc):
        if rc != 0:
            raise RuntimeError(self.lib.seqmix_hstu_last_error().decode())

    def fwd(self, q, k, v, seq_offsets, num_targets, max_seq_len, alpha, sla_k1=0, sla_k2=0, quant_mode=-1):
        out = torch.empty_like(q)
        stream = torch.cuda.current_stream().cuda_stream
        self._check(self.lib.seqmix_hstu_fwd(*self._common(q, k, v, seq_offsets, num_targets, max_seq_len, alpha,
                                                           sla_k1, sla_k2, quant_mode), out.data_ptr(), stream))
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
        # Beta sampling takes no generator: seed the global one from `gen` so every implementation's
        # process draws the same lengths (before, the skewed rows of each process differed).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(gen.initial_seed())
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


def peer_configs():
    return {k: os.environ[k] for k in ("PEER_MAX_CONFIGS", "PEER_NUM_STAGES", "PEER_BWD_SAFE") if k in os.environ}


def make_inputs(max_len, heads, dist, mask, batch, dim, device):
    """The inputs of one shape, identical in every process (seeded on the CPU)."""
    gen = torch.Generator().manual_seed(max_len * 31 + heads * 7 + (dist == "skewed"))
    lengths = lengths_of(dist, batch, max_len, gen)
    targets = torch.minimum(torch.randint(1, 65, (batch,), generator=gen), lengths)
    offsets = torch.zeros(batch + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    total = int(offsets[-1])
    q, k, v, dout = (torch.randn(total, heads, dim, generator=gen).to(device, torch.bfloat16) for _ in range(4))
    # int64 offsets and int32 targets, as generative-recommenders' own benchmark passes them.
    return lengths, targets, offsets.to(device), targets.to(device, torch.int32), q, k, v, dout


def run_impl(args, impl, mode, log):
    device = torch.device("cuda")
    ours = Seqmix(args.lib)
    peer = None
    if impl == "fbgemm":
        # The CUTLASS kernels need no autotuning. Its wrapper wants int32 offsets; the window proxy of
        # the SLA rows goes without targets (refused with a window by the wrapper).
        sys.path.insert(0, os.path.join(args.peers, "fbgemm_hstu", "fbgemm_gpu", "experimental", "hstu"))
        import hstu as fbgemm_hstu

        def peer(q, k, v, so, nt, n, a, w, quant_mode=-1):
            so32 = so.to(torch.int32)
            return fbgemm_hstu.hstu_attn_varlen_func(
                q, k, v, so32, so32, None, None, n, n, n, None, None if w else nt, 1, (w, 0) if w else (-1, 0), a,
                quant_mode=quant_mode)
    elif impl != "seqmix":
        limit = int(os.environ.get("PEER_MAX_CONFIGS", "4"))
        if impl == "gr":
            load_peer_package("generative_recommenders", os.path.join(args.peers, "gr"))
            import generative_recommenders.ops.triton.triton_hstu_attention as mod

            def peer(q, k, v, so, nt, n, a, w):
                return mod.triton_hstu_mha(n, a, q, k, v, so, num_targets=nt, max_attn_len=w)
        else:
            load_peer_package("tzrec", os.path.join(args.peers, "tzrec"))
            import tzrec.ops._triton.triton_hstu_attention as mod

            def peer(q, k, v, so, nt, n, a, w):
                return mod.triton_hstu_mha(n, a, q, k, v, so, causal=True, num_targets=nt, max_attn_len=w)

        cap_autotune(mod, limit, log)

    batch, dim, sla_k1, sla_k2 = 32, 128, 256, 32
    alpha = 1.0 / math.sqrt(dim)
    t_start = time.time()
    rows = []
    fp8_masks = [f"causal_targets_fp8_m{m}" for m in args.quant_modes] if impl in ("seqmix", "fbgemm") else []
    shapes = [(n, "causal_targets") for n in args.max_lens] + [(n, "sla_targets") for n in args.max_lens]
    shapes = sorted(shapes, key=lambda s: args.max_lens.index(s[0]))
    if mode != "fwd_bwd":
        shapes += [(n, m) for n in args.fp8_max_lens for m in fp8_masks]
    for max_len, mask in shapes:
        for heads in (4, 8):
            for dist in ("uniform", "skewed"):
                quant_mode = int(mask.rsplit("_m", 1)[1]) if "_fp8_" in mask else -1
                if time.time() - t_start > args.budget_s:
                    log(f"{impl}: time guard, skipping max_len {max_len} H {heads} {dist} {mask}")
                    continue
                lengths, targets, so, nt, q, k, v, dout = make_inputs(max_len, heads, dist, mask, batch, dim,
                                                                     device)
                sla = mask == "sla_targets"
                k1, k2 = (sla_k1, sla_k2) if sla else (0, 0)
                row = {"max_seq_len": max_len, "H": heads, "lengths": dist, "mask": mask,
                       "tokens": int(q.shape[0]), "attended_pairs": attended_pairs(lengths, targets, k1, k2) * heads}
                if impl == "seqmix":
                    def f():
                        return ours.fwd(q, k, v, so, nt, max_len, alpha, k1, k2, quant_mode)

                    def fb():
                        ours.fwd(q, k, v, so, nt, max_len, alpha, k1, k2)
                        return ours.bwd(q, k, v, so, nt, max_len, alpha, dout, k1, k2)
                else:
                    window = sla_k1 if sla else 0
                    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                    row["peer_mask"] = (f"window{sla_k1}" + ("" if impl == "fbgemm" else "_targets")) if sla else mask
                    extra = {"quant_mode": quant_mode} if quant_mode >= 0 else {}

                    def f():
                        with torch.no_grad():
                            return peer(q, k, v, so, nt, max_len, alpha, window, **extra)

                    def fb():
                        out = peer(qg, kg, vg, so, nt, max_len, alpha, window)
                        return torch.autograd.grad(out, (qg, kg, vg), dout)

                stage = "first fwd"
                try:
                    # One checked call of each before timing: a failure names its stage.
                    out = f()
                    torch.cuda.synchronize()
                    if mode != "fwd" and quant_mode < 0:  # FP8 rows: forward only
                        stage = "first fwd+bwd"
                        grads = fb()
                        torch.cuda.synchronize()
                    stage = "timing"
                    if mode != "fwd_bwd":
                        row.update(fwd_ms=round(timed(f), 4), fwd_peak_mb=round(peak_mb(f), 1))
                    if mode != "fwd" and quant_mode < 0:
                        row.update(fwd_bwd_ms=round(timed(fb), 4), fwd_bwd_peak_mb=round(peak_mb(fb), 1))
                except Exception as e:
                    row["error"] = f"{stage}: {type(e).__name__}: {str(e)[:120]}"
                    log(f"{impl}: {row}")
                    rows.append(row)
                    if "illegal" in str(e) or "CUDA error" in str(e):
                        return rows
                    continue
                # Parity with the peer on the dense mask, one shape per size (same inputs).
                if peer is not None and not sla and heads == 4 and dist == "uniform":
                    parity = {"out": rel_err(ours.fwd(q, k, v, so, nt, max_len, alpha, 0, 0, quant_mode), out)}
                    if mode != "fwd" and quant_mode < 0:
                        dq, dk, dv = ours.bwd(q, k, v, so, nt, max_len, alpha, dout)
                        parity.update(dq=rel_err(dq, grads[0]), dk=rel_err(dk, grads[1]), dv=rel_err(dv, grads[2]))
                        # the scale each relative error divides by (fbgemm's dv came out exactly 0.0 once)
                        parity["max_abs_peer"] = {n: g.float().abs().max().item() for n, g in zip("qkv", grads)}
                        parity["dv_bits_equal"] = bool(torch.equal(dv, grads[2]))
                    row["parity_seqmix_vs_peer"] = parity
                    del out
                log(f"{impl} {mode}: {json.dumps(row)}")
                rows.append(row)
                with open(args.out, "w") as fh:
                    json.dump({"impl": impl, "mode": mode, "rows": rows, "peer_configs": peer_configs()}, fh)
                del q, k, v, dout
                torch.cuda.empty_cache()
    return rows


PEERS = ("gr", "tzrec", "fbgemm")


def merge(paths, out_path, command):
    """One row per shape with every implementation side by side, ratios and the SLA prediction."""
    by_shape = {}
    device = None
    for path in paths:
        try:
            with open(path) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            continue
        device = data.get("device", device)
        for r in data["rows"]:
            key = (r["max_seq_len"], r["H"], r["lengths"], r["mask"])
            row = by_shape.setdefault(key, {"op": "hstu_attention", "B": 32, "max_seq_len": key[0], "H": key[1],
                                            "D": 128, "lengths": key[2], "mask": key[3],
                                            "dtype": "e4m3 from bf16" if "_fp8_" in key[3] else "bf16",
                                            "tokens": r["tokens"], "attended_pairs": r["attended_pairs"]})
            entry = row.setdefault(data["impl"], {})
            if data["impl"] == "seqmix":
                row["tokens"], row["attended_pairs"] = r["tokens"], r["attended_pairs"]
            for n in ("tokens", "attended_pairs", "fwd_ms", "fwd_bwd_ms", "fwd_peak_mb", "fwd_bwd_peak_mb",
                      "peer_mask"):
                if n in r:
                    entry[n] = r[n]
            if "error" in r:
                entry[f"error_{data.get('mode', 'both')}"] = r["error"]
            if "parity_seqmix_vs_peer" in r:
                entry.setdefault("parity_seqmix_vs_peer", {}).update(r["parity_seqmix_vs_peer"])
            if data["impl"] != "seqmix":
                entry[f"configs_{data.get('mode', 'both')}"] = data.get("peer_configs", {})
    rows = []
    for key in sorted(by_shape):
        row = by_shape[key]
        ours = row.get("seqmix", {})
        if "fwd_ms" in ours:
            pairs = row["attended_pairs"]
            ours["fwd_tflops"] = round(4 * 128 * pairs / (ours["fwd_ms"] * 1e9), 1)
            if "fwd_bwd_ms" in ours:
                ours["fwd_bwd_tflops"] = round(14 * 128 * pairs / (ours["fwd_bwd_ms"] * 1e9), 1)
            tag = "_window_proxy" if key[3] == "sla_targets" else ""  # SLA rows: the peers ran the window proxy
            # Time per attended pair, so that a peer that ran other lengths (or the window proxy's pairs)
            # compares fairly; equal to the plain time ratio when the pair counts match.
            ours_pairs = ours.get("attended_pairs", pairs)
            for what in ("fwd", "fwd_bwd"):
                peers = [row[n][f"{what}_ms"] / row[n].get("attended_pairs", pairs) for n in PEERS
                         if f"{what}_ms" in row.get(n, {})]
                if peers and f"{what}_ms" in ours:
                    speedup = min(peers) * ours_pairs / ours[f"{what}_ms"]
                    row[f"speedup_{what}_vs_fastest_peer{tag}"] = round(speedup, 3)
            dense = by_shape.get((key[0], key[1], key[2], "causal_targets"), {}).get("seqmix", {})
            if "_fp8_" in key[3] and "fwd_ms" in dense:
                row["our_bf16_fwd_over_our_fp8_fwd"] = round(dense["fwd_ms"] / ours["fwd_ms"], 3)
            if key[3] == "sla_targets" and "fwd_ms" in dense and "fwd_bwd_ms" in ours:
                dense_row = by_shape[(key[0], key[1], key[2], "causal_targets")]
                scale = ours_pairs / dense.get("attended_pairs", dense_row["attended_pairs"])
                row["sla_time_over_pair_prediction_fwd"] = round(ours["fwd_ms"] / (dense["fwd_ms"] * scale), 3)
                row["sla_time_over_pair_prediction_fwd_bwd"] = round(
                    ours["fwd_bwd_ms"] / (dense["fwd_bwd_ms"] * scale), 3)
        rows.append(row)
    result = {"command": command, "device": device, "peer_max_configs": os.environ.get("PEER_MAX_CONFIGS", "4"),
              "flops": "4 D per attended pair fwd, 10 D bwd", "bf16_matmul_tflops_reference": 787, "rows": rows}
    with open(out_path, "w") as fh:
        json.dump(result, fh, indent=1)
    hdr = f"{'max_len':>7} {'H':>2} {'lengths':>7} {'mask':>20} | {'ours fwd':>8} {'fb':>8} {'TF/s':>5} | " \
          + " | ".join(f"{n[:6] + ' fwd':>10} {'fb':>8}" for n in PEERS) + f" | {'x fwd':>5} {'x fb':>5}"
    print(hdr + " sla/pred bf16/fp8")
    nan = float("nan")
    for r in rows:
        def ms(n, f):
            return f"{r.get(n, {}).get(f, nan):8.3f}"
        peers = " | ".join(f"  {ms(n, 'fwd_ms')} {ms(n, 'fwd_bwd_ms')}" for n in PEERS)
        print(f"{r['max_seq_len']:>7} {r['H']:>2} {r['lengths']:>7} {r['mask']:>20} | {ms('seqmix', 'fwd_ms')} "
              f"{ms('seqmix', 'fwd_bwd_ms')} {r.get('seqmix', {}).get('fwd_bwd_tflops', nan):5.0f} | {peers} | "
              f"{r.get('speedup_fwd_vs_fastest_peer', r.get('speedup_fwd_vs_fastest_peer_window_proxy', nan)):5.2f} "
              f"{r.get('speedup_fwd_bwd_vs_fastest_peer', r.get('speedup_fwd_bwd_vs_fastest_peer_window_proxy', nan)):5.2f}"
              f" {r.get('sla_time_over_pair_prediction_fwd_bwd', nan):8.2f} {r.get('our_bf16_fwd_over_our_fp8_fwd', nan):9.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["seqmix", "gr", "tzrec", "fbgemm"])
    ap.add_argument("--mode", choices=["both", "fwd", "fwd_bwd"], default="both",
                    help="what to time (the peers run fwd and fwd_bwd in separate processes)")
    ap.add_argument("--merge", nargs="+", help="per-implementation JSON files to merge into --out")
    ap.add_argument("--lib", default="build-cuda/libseqmix_hstu_capi.so")
    ap.add_argument("--peers", default="../peers")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--max-lens", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--quant-modes", type=int, nargs="*", default=[],
                    help="FP8 quant modes to time forward-only (seqmix and fbgemm), after the bf16 shapes")
    ap.add_argument("--fp8-max-lens", type=int, nargs="+", default=[8192])
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out, os.environ.get("BENCH_COMMAND", " ".join(sys.argv)))
        return
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    rows = run_impl(args, args.impl, args.mode, log)
    with open(args.out, "w") as fh:
        json.dump({"impl": args.impl, "mode": args.mode, "device": torch.cuda.get_device_name(), "rows": rows,
                   "peer_configs": peer_configs()}, fh)


if __name__ == "__main__":
    main()

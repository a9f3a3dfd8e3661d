"""FLA's chunk_kda (Triton) on the shapes and configuration of bench/kda_bench.cpp, for side-by-side numbers.

Configuration (same as ours): bf16, K = V = 128, use_qk_l2norm_in_kernel, use_gate_in_kernel with A_log and
dt_bias (softplus form), beta given post-sigmoid, no initial / final state. fwd is timed under no_grad;
fwd+bwd runs the autograd forward and o.backward(do). Peak memory = torch.cuda.max_memory_allocated over the
timed calls (inputs, outputs and gradients included, as kda_bench counts them).

  PYTHONPATH=peers/fla-repo python3 bench/kda_vs_fla.py --out fla.json [--ours ours.json --merge h100.json]
  python3 bench/kda_vs_fla.py --out unused --fla-json fla.json --ours ours.json --merge bench/results/h100.json

With --ours/--merge, writes {"kda": {shape: {"ours": ..., "fla": ..., ratios}}} into the merge file, keeping
its other keys.
"""
import argparse
import json
import math
import sys

import torch


def skewed_lengths():
    w = [(i + 1.0) ** -1.5 for i in range(64)]
    s = sum(w)
    lengths = [max(1, int(32768.0 * x / s)) for x in w]
    lengths[0] += 32768 - sum(lengths)
    return lengths


SHAPES = [
    ("B4_T4096_H16_D128", 4, 4096, 16, None),
    ("B1_T32768_H16_D128", 1, 32768, 16, None),
    ("B4_T4096_H64_D128", 4, 4096, 64, None),
    ("varlen64_skewed_T32768_H16_D128", 1, 32768, 16, skewed_lengths()),
]


def time_ms(fn, iters):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def kernel_table(fn, iters, label):
    """Per-kernel CUDA time of `iters` calls of fn (torch.profiler), ms per call, largest first: where FLA spends
    its time, next to our per-stage roofline lines."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = e.cuda_time_total
        if t > 0:
            rows.append((t / 1e3 / iters, e.count // iters, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"FLA kernels {label}: {total:.3f} ms per call in {len(rows)} kernels", flush=True)
    for ms, n, key in rows:
        print(f"  {ms:8.3f} ms  x{n:<3d} {key[:110]}", flush=True)
    return [dict(ms=round(ms, 4), launches=n, kernel=key) for ms, n, key in rows]


def bench_fla(out_path, order, profile_kernels=False):
    from fla.ops.kda import chunk_kda

    dev = "cuda"
    out = {}
    shapes = sorted(SHAPES, key=lambda x: order.index(x[0]) if x[0] in order else len(order))
    for name, B, T, H, lengths in shapes:
        D = 128
        torch.manual_seed(0)
        q = torch.empty(B, T, H, D, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
        k = torch.empty(B, T, H, D, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
        v = torch.empty(B, T, H, D, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
        g = torch.empty(B, T, H, D, device=dev, dtype=torch.bfloat16).uniform_(-2, 2)
        beta = torch.empty(B, T, H, device=dev, dtype=torch.bfloat16).uniform_(0.05, 1.0)
        A_log = torch.empty(H, device=dev, dtype=torch.float32).uniform_(-1, 0.5)
        dt_bias = torch.empty(H * D, device=dev, dtype=torch.float32).uniform_(-0.5, 0.5)
        do = torch.empty(B, T, H, D, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
        cu = None
        kw = {}
        if lengths is not None:
            offs = [0]
            for n in lengths:
                offs.append(offs[-1] + n)
            cu = torch.tensor(offs, device=dev, dtype=torch.int32)
            kw = dict(cu_seqlens=cu, cu_seqlens_cpu=torch.tensor(offs, dtype=torch.int32))
        params = [q, k, v, g, beta, A_log, dt_bias]

        def call():
            return chunk_kda(q, k, v, g, beta, A_log=A_log, dt_bias=dt_bias, use_qk_l2norm_in_kernel=True,
                             use_gate_in_kernel=True, **kw)

        def fwd():
            with torch.no_grad():
                call()

        def fwd_bwd():
            for t in params:
                t.grad = None
            o, _ = call()
            o.backward(do)

        fwd()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fwd_ms = time_ms(fwd, 10)
        fwd_peak = torch.cuda.max_memory_allocated()
        for t in params:
            t.requires_grad_(True)
        fwd_bwd()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fb_ms = time_ms(fwd_bwd, 5)
        fb_peak = torch.cuda.max_memory_allocated()
        mib = 1024.0 * 1024.0
        out[name] = dict(fwd_ms=round(fwd_ms, 4), fwd_bwd_ms=round(fb_ms, 4), fwd_peak_mib=round(fwd_peak / mib, 1),
                         fwd_bwd_peak_mib=round(fb_peak / mib, 1))
        if profile_kernels:  # after the timed calls, so the profiler does not touch their figures
            try:
                out[name]["kernels_fwd"] = kernel_table(fwd, 3, f"{name} fwd")
                out[name]["kernels_fwd_bwd"] = kernel_table(fwd_bwd, 3, f"{name} fwd+bwd")
            except Exception as e:  # the timings above stay valid without the table
                print(f"FLA kernels {name}: profiler failed: {e!r}", flush=True)
        print(f"FLA {name:34s} fwd {fwd_ms:8.3f} ms  fwd+bwd {fb_ms:8.3f} ms  peak {fwd_peak / mib:8.1f} / "
              f"{fb_peak / mib:8.1f} MiB", flush=True)
        del q, k, v, g, beta, do, params
        torch.cuda.empty_cache()
        with open(out_path, "w") as f:  # after every shape: a timeout keeps what was measured
            json.dump(out, f, indent=1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--ours")
    ap.add_argument("--merge")
    ap.add_argument("--command", default="")
    ap.add_argument("--order", default="", help="comma-separated shape names to run first")
    ap.add_argument("--profile", action="store_true", help="also FLA's per-kernel times (torch.profiler)")
    ap.add_argument("--fla-json", nargs="*", help="merge only: FLA results measured earlier (later files win)")
    args = ap.parse_args()
    if args.fla_json:
        fla = {}
        for path in args.fla_json:
            with open(path) as f:
                fla.update(json.load(f))
    else:
        fla = bench_fla(args.out, args.order.split(","), args.profile)
    if not (args.ours and args.merge):
        return
    with open(args.ours) as f:
        ours = json.load(f)
    try:
        with open(args.merge) as f:
            merged = json.load(f)
    except (OSError, ValueError):
        merged = {}
    kda = {"command": args.command, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "H100",
           "fla_commit": "bc3b101",
           "config": "bf16, K=V=128, qk l2norm + softplus gate (A_log, dt_bias) in kernel, no states", "shapes": {}}
    for name in fla:
        o, r = ours.get(name, {}), fla[name]
        row = {"ours": o, "fla": r}
        if o:
            row["speedup_fwd"] = round(r["fwd_ms"] / o["fwd_ms"], 3)
            row["speedup_fwd_bwd"] = round(r["fwd_bwd_ms"] / o["fwd_bwd_ms"], 3)
        kda["shapes"][name] = row
        if o:
            print(f"{name:34s} speedup vs FLA: fwd {row['speedup_fwd']:.2f}x  fwd+bwd {row['speedup_fwd_bwd']:.2f}x")
    merged["kda"] = kda
    with open(args.merge, "w") as f:
        json.dump(merged, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

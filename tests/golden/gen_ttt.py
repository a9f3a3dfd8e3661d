"""Golden vectors for TTT-Linear from flash-linear-attention's own naive reference.

Usage: python3 tests/golden/gen_ttt.py --peers <dir with fla-repo/> --out tests/golden/ttt

Runs `fla/ops/ttt/naive.py::chunk_ttt_linear_ref` (loaded by file path: no triton, no fla package)
in float64 on the CPU. naive.py hard-codes float32 (`.to(torch.float32)`, zeros(dtype=float32)), so
the module's `torch` global is replaced by a proxy whose `float32` is float64; everything else is
the real torch. Varlen cases run the reference once per sequence (naive.py has no cu_seqlens), each
with its own initial state, which is what FLA's chunk kernels compute. Gradients: torch autograd of
sum(o * do) + sum(ht * dht) + sum(hbt * dhbt).
"""
import argparse
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_case  # noqa: E402


class _Float64Torch:
    """torch with float32 -> float64, so naive.py computes in double."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def load_naive(peers):
    path = os.path.join(peers, "fla-repo", "fla", "ops", "ttt", "naive.py")
    spec = importlib.util.spec_from_file_location("fla_ttt_naive", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.torch = _Float64Torch()
    return module


def run_case(naive, gen, name, out_dir, B, T, H, D, chunk_size, scale=None, eps=1e-6, use_state=True,
             cu_seqlens=None):
    f64 = dict(dtype=torch.float64)
    q = torch.randn(B, T, H, D, generator=gen, **f64)
    k = torch.randn(B, T, H, D, generator=gen, **f64)
    v = torch.randn(B, T, H, D, generator=gen, **f64)
    w = 1.0 + 0.3 * torch.randn(H, D, generator=gen, **f64)
    b = 0.3 * torch.randn(H, D, generator=gen, **f64)
    eta = 0.05 + 0.25 * torch.rand(B, T, H, 1, generator=gen, **f64)
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    h0 = 0.3 * torch.randn(N, H, D, D, generator=gen, **f64)
    hb0 = 0.3 * torch.randn(N, H, 1, D, generator=gen, **f64)
    do = torch.randn(B, T, H, D, generator=gen, **f64)
    dht = torch.randn(N, H, D, D, generator=gen, **f64)
    dhbt = torch.randn(N, H, 1, D, generator=gen, **f64)

    leaves = [q, k, v, w, b, eta] + ([h0, hb0] if use_state else [])
    for t in leaves:
        t.requires_grad_(True)

    def ref(qs, ks, vs, es, hs, hbs):
        # naive.py scales q in place: hand it a copy so the leaf stays untouched
        return naive.chunk_ttt_linear_ref(qs.clone(), ks, vs, w, b, es, scale=scale, eps=eps,
                                          mini_batch_size=chunk_size, initial_state=hs,
                                          initial_state_bias=hbs, output_final_state=True)

    if cu_seqlens is None:
        o, ht, hbt = ref(q, k, v, eta, h0 if use_state else None, hb0 if use_state else None)
    else:
        outs, hts, hbts = [], [], []
        for n in range(N):
            s, e = cu_seqlens[n], cu_seqlens[n + 1]
            if e == s:  # an empty sequence passes its state through
                outs.append(q[:, s:e] * 0)
                hts.append(h0[n:n + 1] if use_state else torch.zeros(1, H, D, D, **f64))
                hbts.append(hb0[n:n + 1] if use_state else torch.zeros(1, H, 1, D, **f64))
                continue
            o_n, ht_n, hbt_n = ref(q[:, s:e], k[:, s:e], v[:, s:e], eta[:, s:e],
                                   h0[n:n + 1] if use_state else None, hb0[n:n + 1] if use_state else None)
            outs.append(o_n)
            hts.append(ht_n)
            hbts.append(hbt_n)
        o, ht, hbt = torch.cat(outs, 1), torch.cat(hts, 0), torch.cat(hbts, 0)

    loss = (o * do).sum() + (ht * dht).sum() + (hbt * dhbt).sum()
    grads = torch.autograd.grad(loss, leaves)
    tensors = {"q": q, "k": k, "v": v, "w": w, "b": b, "eta": eta}
    if use_state:
        tensors.update(h0=h0, hb0=hb0)
    if cu_seqlens is not None:
        tensors["cu_seqlens"] = torch.tensor(cu_seqlens, dtype=torch.int64)
    tensors.update({"do": do, "dht": dht, "dhbt": dhbt, "o": o, "ht": ht, "hbt": hbt})
    for leaf_name, g in zip(["dq", "dk", "dv", "dw", "db", "deta", "dh0", "dhb0"], grads):
        tensors[leaf_name] = g
    tensors["chunk_size"] = torch.tensor([chunk_size], dtype=torch.int64)
    tensors["eps"] = torch.tensor([eps], **f64)
    if scale is not None:
        tensors["scale"] = torch.tensor([scale], **f64)
    write_case(os.path.join(out_dir, name + ".smxg"), tensors)
    print(name, {key: tuple(t.shape) for key, t in tensors.items()})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    naive = load_naive(args.peers)
    gen = torch.Generator().manual_seed(20261123)
    run_case(naive, gen, "dense_t17_c4_state", args.out, B=2, T=17, H=2, D=8, chunk_size=4)
    run_case(naive, gen, "dense_t7_c16_nostate_scale", args.out, B=1, T=7, H=2, D=8, chunk_size=16, scale=0.3,
             eps=1e-5, use_state=False)
    run_case(naive, gen, "dense_t32_c16_d16", args.out, B=1, T=32, H=1, D=16, chunk_size=16)
    run_case(naive, gen, "dense_t1_c4", args.out, B=2, T=1, H=1, D=8, chunk_size=4)
    run_case(naive, gen, "varlen_c4_state", args.out, B=1, T=19, H=2, D=8, chunk_size=4,
             cu_seqlens=[0, 5, 5, 6, 19])
    run_case(naive, gen, "varlen_c16_nostate", args.out, B=1, T=21, H=1, D=16, chunk_size=16, scale=0.5,
             use_state=False, cu_seqlens=[0, 1, 18, 21])


if __name__ == "__main__":
    main()

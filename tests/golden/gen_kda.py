"""Golden vectors for seqmix KDA from flash-linear-attention's own references.

usage: python3 tests/golden/gen_kda.py --peers <dir with fla-repo/> --out tests/golden/kda

Forward: fla/ops/kda/naive.py (naive_recurrent_kda, naive_chunk_kda) with the gate of
fla/ops/kda/gate.py (naive_kda_gate, naive_kda_lowerbound_gate). Gradients: torch autograd through
those functions of loss = sum(o * do) + sum(final_state * dht). FLA has no torch reference for its
Triton l2norm (fla/modules/l2norm.py: x * rsqrt(sum x^2 + 1e-6)) and beta sigmoid
(fla/ops/common/gate.py: scale * sigmoid(x), scale 2 with allow_neg_eigval); they are written here
with exactly those formulas, in the order chunk_kda applies them. Varlen is the per-sequence loop
over cu_seqlens, as FLA's own tests do.

FLA's naive functions cast to float32 (`x.to(torch.float)`, `g.float()`); to get float64 vectors the
naive module sees `torch.float` as float64 and `Tensor.float` means `.double()` during the gate call.
Heavy imports the naive code does not use (triton, fla.*, einops when absent) are stubbed.
"""
import argparse
import contextlib
import importlib.util
import math
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_case  # noqa: E402

L2NORM_EPS = 1e-6  # fla.modules.l2norm default


class _Anything:
    """Stands for any attribute / call / decorator of a stubbed module."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __iter__(self):
        return iter(())


def _stub_module(name, **attrs):
    m = types.ModuleType(name)
    m.__getattr__ = lambda attr: _Anything()
    m.__path__ = []
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def _rearrange_fallback(x, pattern, **sizes):
    """The einops patterns naive_chunk_kda uses, for machines without einops."""
    p = " ".join(pattern.split())
    if p == "b (n c) h ... -> b h n c ...":
        c = sizes["c"]
        b, t, h = x.shape[:3]
        x = x.reshape(b, t // c, c, h, *x.shape[3:])
        return x.permute(0, 3, 1, 2, *range(4, x.dim()))
    if p == "b h n c d -> b (n c) h d":
        b, h, n, c, d = x.shape
        return x.permute(0, 2, 3, 1, 4).reshape(b, n * c, h, d)
    if p == "b h k -> b h k 1":
        return x.unsqueeze(-1)
    if p == "b h c k -> b h k c":
        return x.transpose(-1, -2)
    raise NotImplementedError(pattern)


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_fla(peers):
    kda_dir = os.path.join(peers, "fla-repo", "fla", "ops", "kda")
    names = ["triton", "triton.language", "fla", "fla.ops", "fla.ops.backends", "fla.ops.utils",
             "fla.ops.utils.cache", "fla.ops.utils.index", "fla.ops.utils.op", "fla.ops.utils.softplus", "fla.utils"]
    if importlib.util.find_spec("einops") is None:
        names.append("einops")
    saved = {n: sys.modules.get(n) for n in names}
    stubs = {n: _stub_module(n) for n in names}
    stubs["triton"].language = stubs["triton.language"]
    stubs["fla.utils"] = _stub_module("fla.utils", IS_AMD=False, autotune_cache_kwargs={},
                                      check_shared_mem=lambda *a, **k: True,
                                      input_guard=lambda f: f, autocast_custom_fwd=lambda f: f,
                                      autocast_custom_bwd=lambda f: f)
    if "einops" in stubs:
        stubs["einops"].rearrange = _rearrange_fallback
    # gate.py decorates an unused function with torch.compiler.disable: keep torch._dynamo (and its
    # triton probing) out of the stubbed import; torch < 2.1 has no torch.compiler at all.
    saved_compiler = getattr(torch, "compiler", None)
    torch.compiler = types.SimpleNamespace(disable=lambda f: f)
    sys.modules.update(stubs)
    try:
        naive = _load(os.path.join(kda_dir, "naive.py"), "fla_kda_naive")
        gate = _load(os.path.join(kda_dir, "gate.py"), "fla_kda_gate")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
        if saved_compiler is None:
            del torch.compiler
        else:
            torch.compiler = saved_compiler
    # naive.py looks `torch` up at call time: give it one whose `float` is float64.
    naive.torch = _TorchWithFloat64()
    return naive, gate


class _TorchWithFloat64:
    """`torch` as seen by naive.py: `torch.float` is float64, everything else is torch's."""

    def __getattr__(self, name):
        return torch.float64 if name == "float" else getattr(torch, name)


@contextlib.contextmanager
def tensor_float_is_double():
    original = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self.to(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.float = original


def l2norm(x):
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + L2NORM_EPS)


def run_case(naive, gate, case, seed):
    """Returns the tensors of one golden case (inputs, options, outputs, gradients)."""
    gen = torch.Generator().manual_seed(seed)
    B, T, H, HV, K, V = case["B"], case["T"], case["H"], case["HV"], case["K"], case["V"]
    f64 = torch.float64

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=f64) * scale).requires_grad_()

    def uniform(*shape, lo, hi):
        return (lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=f64)).requires_grad_()

    cu = case.get("cu_seqlens")
    N = len(cu) - 1 if cu is not None else B
    q = randn(B, T, H, K, scale=0.6)
    k = randn(B, T, H, K, scale=0.6)
    v = randn(B, T, HV, V)
    use_gate = case.get("gate") is not None
    g_in = randn(B, T, HV, K) if use_gate else uniform(B, T, HV, K, lo=-0.7, hi=-0.02)
    beta_sigmoid = case.get("beta_sigmoid", False)
    neg_eig = case.get("allow_neg_eigval", False)
    beta_in = randn(B, T, HV) if beta_sigmoid else uniform(B, T, HV, lo=0.1, hi=0.9)
    A_log = uniform(HV, lo=-1.5, hi=0.3) if case.get("A_log") else None
    dt_bias = randn(HV * K, scale=0.5) if case.get("dt_bias") else None
    h0 = randn(N, HV, K, V, scale=0.5) if case.get("initial_state") else None
    final = case.get("output_final_state", False)
    scale = case.get("scale")
    lower_bound = case.get("lower_bound")

    # chunk_kda's order: l2norm(q, k), beta sigmoid, gate (inside chunk_kda_fwd), then the recurrence.
    qn = l2norm(q) if case.get("l2norm") else q
    kn = l2norm(k) if case.get("l2norm") else k
    beta = (2.0 if neg_eig else 1.0) * torch.sigmoid(beta_in) if beta_sigmoid else beta_in
    if use_gate:
        with tensor_float_is_double():
            if lower_bound is None:
                g = gate.naive_kda_gate(g_in, A_log, dt_bias, output_dtype=f64)
            else:
                g = gate.naive_kda_lowerbound_gate(g_in, A_log, dt_bias, lower_bound=lower_bound, output_dtype=f64)
    else:
        g = g_in

    fn = naive.naive_chunk_kda if case["form"] == "chunk" else naive.naive_recurrent_kda
    offsets = cu if cu is not None else None
    if offsets is None:
        o, ht = fn(qn, kn, v, g, beta, scale=scale, initial_state=h0, output_final_state=True)
    else:
        outs, states = [], []
        for n in range(N):
            s, e = offsets[n], offsets[n + 1]
            o_n, ht_n = fn(qn[:, s:e], kn[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e], scale=scale,
                           initial_state=None if h0 is None else h0[n:n + 1], output_final_state=True)
            outs.append(o_n)
            states.append(ht_n)
        o, ht = torch.cat(outs, 1), torch.cat(states, 0)

    d_o = torch.randn(o.shape, generator=gen, dtype=f64)
    loss = (o * d_o).sum()
    dht = None
    if final:
        dht = torch.randn(ht.shape, generator=gen, dtype=f64)
        loss = loss + (ht * dht).sum()
    leaves = {"q": q, "k": k, "v": v, "g": g_in, "beta": beta_in, "initial_state": h0, "A_log": A_log,
              "dt_bias": dt_bias}
    present = {n: t for n, t in leaves.items() if t is not None}
    grads = torch.autograd.grad(loss, list(present.values()), allow_unused=True)
    grad_names = {"q": "dq", "k": "dk", "v": "dv", "g": "dg", "beta": "dbeta", "initial_state": "dh0",
                  "A_log": "dA_log", "dt_bias": "ddt_bias"}

    out = dict(present)
    if cu is not None:
        out["cu_seqlens"] = torch.tensor(cu, dtype=torch.int64)
    out.update({
        "scale": torch.tensor([K ** -0.5 if scale is None else scale], dtype=f64),
        "output_final_state": torch.tensor([1.0 if final else 0.0], dtype=f64),
        "use_qk_l2norm_in_kernel": torch.tensor([1.0 if case.get("l2norm") else 0.0], dtype=f64),
        "use_gate_in_kernel": torch.tensor([1.0 if use_gate else 0.0], dtype=f64),
        "lower_bound": torch.tensor([math.nan if lower_bound is None else lower_bound], dtype=f64),
        "use_beta_sigmoid_in_kernel": torch.tensor([1.0 if beta_sigmoid else 0.0], dtype=f64),
        "allow_neg_eigval": torch.tensor([1.0 if neg_eig else 0.0], dtype=f64),
        "o": o,
        "do": d_o,
    })
    if final:
        out["final_state"] = ht
        out["dht"] = dht
    for (name, _), grad in zip(present.items(), grads):
        out[grad_names[name]] = grad if grad is not None else torch.zeros_like(present[name])
    return out


CASES = {
    # name: shapes, options, which FLA naive function
    "recurrent_basic": dict(form="recurrent", B=2, T=13, H=2, HV=2, K=8, V=6),
    "recurrent_h0_final_scale": dict(form="recurrent", B=1, T=21, H=1, HV=1, K=8, V=8, scale=0.3,
                                     initial_state=True, output_final_state=True),
    "recurrent_l2norm_gva": dict(form="recurrent", B=2, T=9, H=1, HV=3, K=6, V=5, l2norm=True,
                                 initial_state=True, output_final_state=True),
    "recurrent_gate_softplus_beta_sigmoid": dict(form="recurrent", B=1, T=17, H=2, HV=4, K=4, V=4, gate=True,
                                                 A_log=True, dt_bias=True, beta_sigmoid=True,
                                                 output_final_state=True),
    "recurrent_gate_softplus_no_bias": dict(form="recurrent", B=1, T=11, H=1, HV=2, K=5, V=3, gate=True,
                                            A_log=True, initial_state=True),
    "recurrent_gate_lower_bound_neg_eigval": dict(form="recurrent", B=2, T=7, H=1, HV=2, K=4, V=5, gate=True,
                                                  A_log=True, dt_bias=True, lower_bound=-5.0, beta_sigmoid=True,
                                                  allow_neg_eigval=True, initial_state=True,
                                                  output_final_state=True),
    "recurrent_gate_lower_bound_no_A_log": dict(form="recurrent", B=1, T=15, H=1, HV=1, K=6, V=4, gate=True,
                                                dt_bias=True, lower_bound=-2.0, l2norm=True),
    "varlen_all_options": dict(form="recurrent", B=1, T=31, H=2, HV=4, K=4, V=3, cu_seqlens=[0, 0, 1, 12, 12, 31],
                               l2norm=True, gate=True, A_log=True, dt_bias=True, beta_sigmoid=True,
                               initial_state=True, output_final_state=True),
    "chunk_T64_gate_l2norm": dict(form="chunk", B=1, T=64, H=1, HV=2, K=8, V=8, l2norm=True, gate=True,
                                  A_log=True, dt_bias=True, initial_state=True, output_final_state=True),
    "chunk_T128_plain": dict(form="chunk", B=1, T=128, H=1, HV=1, K=4, V=4, output_final_state=True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", required=True, help="directory holding fla-repo/")
    parser.add_argument("--out", required=True, help="output directory, e.g. tests/golden/kda")
    args = parser.parse_args()
    naive, gate = load_fla(args.peers)
    os.makedirs(args.out, exist_ok=True)
    for i, (name, case) in enumerate(sorted(CASES.items())):
        tensors = run_case(naive, gate, case, seed=1000 + i)
        path = os.path.join(args.out, name + ".smxg")
        write_case(path, tensors)
        print(f"{path}: {len(tensors)} tensors ({'naive_chunk_kda' if case['form'] == 'chunk' else 'naive_recurrent_kda'})")


if __name__ == "__main__":
    main()

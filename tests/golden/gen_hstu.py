"""Golden vectors for HSTU attention from the peers' own PyTorch references.

usage: python3 tests/golden/gen_hstu.py --peers <dir with the peers> --out tests/golden/hstu

Runs in float64 on the CPU:
  gr_*    generative-recommenders ops/pytorch/pt_hstu_attention.py::pytorch_hstu_mha
  tzrec_* TorchEasyRec ops/_pytorch/pt_hstu_attention.py::pytorch_hstu_mha (scaling_seqlen),
  sla_*   the same with attn_func from ops/hstu_attention_utils.py::build_sla_func_tensor
and writes inputs, params, out and the autograd gradients of sum(out * dout) as attn_*.smxg.
fbgemm's jagged_to_padded_dense / dense_to_jagged (not installed here) are replaced by
pure-torch equivalents; TorchEasyRec's torchrec-dependent helper modules by small stubs.
Needs only torch + numpy; works with torch 1.13 and 2.x.
"""
import argparse
import importlib.util
import os
import sys
import types
from enum import Enum

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_case  # noqa: E402


def _jagged_to_padded_dense(values, offsets, max_lengths, padding_value=0.0):
    off = [int(x) for x in offsets[0]]
    n_max = int(max_lengths[0])
    rows = []
    for b in range(len(off) - 1):
        n = min(off[b + 1] - off[b], n_max)
        seg = values[off[b]:off[b] + n]
        pad = torch.full((n_max - n,) + tuple(values.shape[1:]), padding_value, dtype=values.dtype)
        rows.append(torch.cat([seg, pad], dim=0))
    return torch.stack(rows, dim=0)


def _dense_to_jagged(dense, offsets, total_l=None):
    off = [int(x) for x in offsets[0]]
    pieces = [dense[b, :off[b + 1] - off[b]] for b in range(len(off) - 1)]
    return (torch.cat(pieces, dim=0),)


def _install_fbgemm_stubs():
    ns = torch.ops.fbgemm
    setattr(ns, "jagged_to_padded_dense", _jagged_to_padded_dense)
    setattr(ns, "dense_to_jagged", _dense_to_jagged)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    load_library = torch.ops.load_library
    torch.ops.load_library = lambda *args, **kwargs: None  # GR loads fbgemm .so files by Buck path
    try:
        spec.loader.exec_module(module)
    finally:
        torch.ops.load_library = load_library
    return module


def _load_tzrec_sla_builder(tzrec_dir):
    """hstu_attention_utils.py imports tzrec.ops (light), jagged_tensors and fx_util (torchrec)."""
    pkg = types.ModuleType("tzrec")
    pkg.__path__ = []
    sys.modules["tzrec"] = pkg
    ops = _load("tzrec.ops", os.path.join(tzrec_dir, "ops", "__init__.py"))
    ops.__path__ = []
    jagged = types.ModuleType("tzrec.ops.jagged_tensors")

    def _unused(*args, **kwargs):
        raise RuntimeError("jagged truncation helpers are not needed for the SLA mask")

    jagged.concat_2D_jagged = _unused
    jagged.split_2D_jagged = _unused
    sys.modules["tzrec.ops.jagged_tensors"] = jagged
    utils = types.ModuleType("tzrec.utils")
    utils.__path__ = []
    sys.modules["tzrec.utils"] = utils
    fx_util = types.ModuleType("tzrec.utils.fx_util")

    def fx_int_item(x):
        return int(x.item())

    fx_util.fx_int_item = fx_int_item
    sys.modules["tzrec.utils.fx_util"] = fx_util
    return _load("tzrec.ops.hstu_attention_utils", os.path.join(tzrec_dir, "ops", "hstu_attention_utils.py"))


PARAM_DEFAULTS = dict(
    alpha=None,
    scaling_seqlen=-1,
    causal=True,
    contextual_seq_len=0,
    max_attn_len=0,
    min_full_attn_seq_len=0,
    sla_k1=0,
    sla_k2=0,
)


def _inputs(seed, lengths, heads, dqk, dv, targets):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    offsets = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int64)
    q = torch.randn(total, heads, dqk, generator=gen, dtype=torch.float64)
    k = torch.randn(total, heads, dqk, generator=gen, dtype=torch.float64)
    v = torch.randn(total, heads, dv, generator=gen, dtype=torch.float64)
    dout = torch.randn(total, heads, dv, generator=gen, dtype=torch.float64)
    num_targets = None if targets is None else torch.tensor(targets, dtype=torch.int64)
    return offsets, q, k, v, dout, num_targets


def _run(fn, q, k, v, dout):
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    (out * dout).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _write(out_dir, name, params, max_seq_len, offsets, q, k, v, dout, num_targets, results):
    out, dq, dk, dv = results
    tensors = dict(q=q, k=k, v=v, seq_offsets=offsets, dout=dout, out=out, dq=dq, dk=dk, dv=dv)
    if num_targets is not None:
        tensors["num_targets"] = num_targets
    tensors["max_seq_len"] = int(max_seq_len)
    tensors["alpha"] = float(params["alpha"])
    for key in ("scaling_seqlen", "contextual_seq_len", "max_attn_len", "min_full_attn_seq_len", "sla_k1", "sla_k2"):
        tensors[key] = int(params[key])
    tensors["causal"] = int(bool(params["causal"]))
    write_case(os.path.join(out_dir, name + ".smxg"), tensors)
    print("wrote %s: out max |.| %.3g" % (name, float(out.abs().max()) if out.numel() else 0.0))


LENGTHS = [5, 0, 1, 7, 3]
TARGETS = [2, 0, 1, 3, 1]
MAX_SEQ_LEN = 9

# (name, lengths, num_targets, params): the fixed mask, for both peers.
FIXED_CASES = [
    ("causal", LENGTHS, None, dict()),
    ("targets", LENGTHS, TARGETS, dict()),
    ("contextual", LENGTHS, None, dict(contextual_seq_len=2)),
    ("contextual_targets", LENGTHS, TARGETS, dict(contextual_seq_len=2)),
    ("window", LENGTHS, None, dict(max_attn_len=2)),
    ("window_targets_contextual", LENGTHS, TARGETS, dict(max_attn_len=2, contextual_seq_len=1)),
    ("window_min_full", LENGTHS, TARGETS, dict(max_attn_len=1, min_full_attn_seq_len=2)),
    ("window_min_full_contextual", LENGTHS, TARGETS, dict(max_attn_len=2, min_full_attn_seq_len=1, contextual_seq_len=2)),
    ("noncausal", LENGTHS, None, dict(causal=False)),
    ("noncausal_targets_contextual_window", LENGTHS, TARGETS, dict(causal=False, contextual_seq_len=2, max_attn_len=2)),
    # contextual prefix longer than some sequences; all-target and target-only sequences
    ("contextual_overflow", [3, 1, 6, 2], [3, 0, 2, 2], dict(contextual_seq_len=4, max_attn_len=1)),
]

# SLA (TorchEasyRec only): corners of sla_k1 / sla_k2 with targets and the contextual prefix.
SLA_CASES = [
    ("sla_k1_2_k2_1", LENGTHS, None, dict(sla_k1=2, sla_k2=1)),
    ("sla_k1_2_k2_1_targets", LENGTHS, TARGETS, dict(sla_k1=2, sla_k2=1)),
    ("sla_k1_ge_len", LENGTHS, TARGETS, dict(sla_k1=20, sla_k2=0)),
    ("sla_k2_0_contextual", LENGTHS, TARGETS, dict(sla_k1=3, sla_k2=0, contextual_seq_len=2)),
    ("sla_k2_ge_len", LENGTHS, TARGETS, dict(sla_k1=1, sla_k2=20)),
    ("sla_k1_0_prefix_only", LENGTHS, TARGETS, dict(sla_k1=0, sla_k2=2)),
    ("sla_contextual_gt_k2", LENGTHS, TARGETS, dict(sla_k1=2, sla_k2=1, contextual_seq_len=3)),
    ("sla_all_targets", [4, 3, 5], [4, 0, 2], dict(sla_k1=2, sla_k2=1, scaling_seqlen=4)),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    _install_fbgemm_stubs()
    gr = _load("gr_pt_hstu_attention", os.path.join(
        args.peers, "gr", "generative_recommenders", "ops", "pytorch", "pt_hstu_attention.py"))
    tzrec_dir = os.path.join(args.peers, "tzrec", "tzrec")
    tz = _load("tzrec_pt_hstu_attention", os.path.join(tzrec_dir, "ops", "_pytorch", "pt_hstu_attention.py"))
    sla = _load_tzrec_sla_builder(tzrec_dir)

    heads, dqk, dv = 2, 4, 3
    alpha = 1.0 / dqk ** 0.5
    seed = 0
    for name, lengths, targets, opts in FIXED_CASES:
        for peer in ("gr", "tzrec"):
            seed += 1
            params = dict(PARAM_DEFAULTS, alpha=alpha, **opts)
            if peer == "tzrec":
                params["scaling_seqlen"] = 5  # TorchEasyRec's divisor option
            offsets, q, k, v, dout, num_targets = _inputs(seed, lengths, heads, dqk, dv, targets)
            max_seq_len = max(max(lengths), 1) + 2

            def fn(q_, k_, v_, peer=peer, params=params):
                kwargs = dict(
                    max_seq_len=max_seq_len, alpha=params["alpha"], q=q_, k=k_, v=v_, seq_offsets=offsets,
                    causal=params["causal"], num_targets=num_targets, max_attn_len=params["max_attn_len"],
                    contextual_seq_len=params["contextual_seq_len"],
                    min_full_attn_seq_len=params["min_full_attn_seq_len"])
                if peer == "gr":
                    return gr.pytorch_hstu_mha(**kwargs)
                return tz.pytorch_hstu_mha(scaling_seqlen=params["scaling_seqlen"], **kwargs)

            results = _run(fn, q, k, v, dout)
            _write(args.out, "attn_%s_%s" % (peer, name), params, max_seq_len, offsets, q, k, v, dout, num_targets,
                   results)

    for name, lengths, targets, opts in SLA_CASES:
        seed += 1
        params = dict(PARAM_DEFAULTS, alpha=alpha, **opts)
        offsets, q, k, v, dout, num_targets = _inputs(seed, lengths, heads, dqk, dv, targets)
        max_seq_len = MAX_SEQ_LEN
        attn_func = sla.build_sla_func_tensor(
            nheads=heads, sla_k1=params["sla_k1"], sla_k2=params["sla_k2"], seq_offsets=offsets,
            total_q=int(offsets[-1]), num_targets=num_targets, contextual_seq_len=params["contextual_seq_len"])

        def fn(q_, k_, v_, params=params, attn_func=attn_func):
            return tz.pytorch_hstu_mha(
                max_seq_len=max_seq_len, alpha=params["alpha"], q=q_, k=k_, v=v_, seq_offsets=offsets,
                attn_func=attn_func, scaling_seqlen=params["scaling_seqlen"])

        results = _run(fn, q, k, v, dout)
        _write(args.out, "attn_tzrec_%s" % name, params, max_seq_len, offsets, q, k, v, dout, num_targets, results)


if __name__ == "__main__":
    main()

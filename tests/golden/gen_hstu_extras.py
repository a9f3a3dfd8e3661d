#!/usr/bin/env python3
"""Golden vectors for the HSTU extras (attention truncation, FP8 quantization) from the peers.

usage: python3 tests/golden/gen_hstu_extras.py --peers <dir with the peers> --out tests/golden/hstu_extras
                                               [--fbgemm <FBGEMM checkout>]

truncation_*.smxg: TorchEasyRec's compute_stu_truncation_plan + apply_stu_truncation_plan
  (tzrec/ops/hstu_attention_utils.py, Kernel.PYTORCH) in float64 on the CPU, gradient of
  sum(y * dy) with respect to x by torch autograd. Stubs: torchrec (imported by
  tzrec.utils.fx_util; fx_int_item / fx_arange replaced by int(t.item()) / torch.arange) and the
  two fbgemm ops it calls (asynchronous_complete_cumsum, jagged_to_padded_dense) written in torch.
fp8_*.smxg: fbgemm_gpu HSTU's quantizers (quantize_for_two_directions, quantize_for_block_scale,
  quantize_for_head_batch_tensor, and the plain cast of quant_mode 0) from
  <fbgemm>/fbgemm_gpu/experimental/hstu/hstu/cuda_hstu_attention.py, run as fbgemm runs them:
  on CUDA (they allocate on "cuda"; CUDA divides by a Python scalar through its reciprocal, so
  CPU results would differ) with torch >= 2.1 (float8_e4m3fn). Without CUDA, float8 or the
  FBGEMM file these cases are skipped with a message. The package's `.library` (the compiled
  kernels) is stubbed.
"""
import argparse
import enum
import importlib.util
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_case  # noqa: E402


def _module(name, path=None, package=False, **attrs):
    if path is None:
        mod = types.ModuleType(name)
    else:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
    if package:
        mod.__path__ = []
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    if path is not None:
        spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- truncation (TorchEasyRec)

def _complete_cumsum(t):
    return torch.cat([t.new_zeros(1), torch.cumsum(t, 0)])


def _jagged_to_padded_dense(values, offsets, max_lengths, padding_value=0.0):
    # fbgemm semantics: [B, max_len, D], sequence b's first min(len_b, max_len) rows, padding after.
    offsets, max_len = offsets[0], int(max_lengths[0])
    padded_values = torch.cat([values, values.new_full((1, values.size(1)), padding_value)])
    pad_row = values.size(0)
    index = []
    for b in range(offsets.numel() - 1):
        start, end = int(offsets[b]), int(offsets[b + 1])
        index.append([start + p if start + p < end else pad_row for p in range(max_len)])
    index = torch.tensor(index, dtype=torch.long).reshape(-1, max_len)
    return padded_values[index]


def _install_fbgemm_jagged_stubs():
    try:
        torch.ops.fbgemm.asynchronous_complete_cumsum  # real fbgemm_gpu already loaded
        return
    except (AttributeError, RuntimeError):
        pass
    setattr(torch.ops, "fbgemm", types.SimpleNamespace(
        asynchronous_complete_cumsum=_complete_cumsum, jagged_to_padded_dense=_jagged_to_padded_dense))


def load_tzrec(peers):
    root = os.path.join(peers, "tzrec", "tzrec")
    _module("tzrec", package=True)
    _module("tzrec.utils", package=True)

    def fx_int_item(x):
        return int(x.item())

    def fx_arange(n, device):
        return torch.arange(n, device=device)

    _module("tzrec.utils.fx_util", fx_int_item=fx_int_item, fx_arange=fx_arange)
    _module("tzrec.ops", os.path.join(root, "ops", "__init__.py"))
    sys.modules["tzrec.ops"].__path__ = []
    _module("tzrec.ops._pytorch", package=True)
    _module("tzrec.ops._pytorch.pt_jagged_tensors", os.path.join(root, "ops", "_pytorch", "pt_jagged_tensors.py"))
    _module("tzrec.ops.jagged_tensors", os.path.join(root, "ops", "jagged_tensors.py"))
    _install_fbgemm_jagged_stubs()
    return _module("tzrec.ops.hstu_attention_utils", os.path.join(root, "ops", "hstu_attention_utils.py"))


TRUNCATION_CASES = [
    # name, lengths, num_targets (None = listwise), truncate_tail_len, contextual_seq_len, D
    ("truncation_targets", [7, 12, 5, 20, 9], [1, 2, 0, 3, 2], 4, 0, 3),
    ("truncation_context", [9, 14, 6, 3, 11], [2, 1, 0, 1, 3], 3, 2, 2),
    ("truncation_short", [3, 4, 5, 10, 1], [2, 4, 1, 2, 0], 2, 1, 3),
    ("truncation_tail0", [6, 8, 2, 5], [1, 3, 1, 0], 0, 1, 2),
    ("truncation_listwise", [11, 2, 7], None, 5, 0, 3),
    ("truncation_listwise_context", [10, 4, 13], None, 3, 2, 2),
    ("truncation_empty_sequences", [0, 6, 0, 8, 1], [0, 2, 0, 1, 1], 2, 0, 2),
    ("truncation_nothing_dropped", [4, 5], [1, 2], 10, 1, 2),
]


def gen_truncation(peers, out):
    utils = load_tzrec(peers)
    kernel = sys.modules["tzrec.ops"].Kernel.PYTORCH
    g = torch.Generator().manual_seed(1234)
    for name, lengths, targets, tail, context, dim in TRUNCATION_CASES:
        offsets = _complete_cumsum(torch.tensor(lengths, dtype=torch.int64))
        num_targets = None if targets is None else torch.tensor(targets, dtype=torch.int64)
        total = int(offsets[-1])
        x = torch.randn(total, dim, generator=g, dtype=torch.float64).requires_grad_()
        plan = utils.compute_stu_truncation_plan(
            offsets, num_targets, max(lengths), truncate_tail_len=tail, contextual_seq_len=context)
        y = utils.apply_stu_truncation_plan(x, plan, kernel=kernel)
        dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        (dx,) = torch.autograd.grad((y * dy).sum(), x)
        case = {
            "seq_offsets": offsets, "truncate_tail_len": tail, "contextual_seq_len": context,
            "new_lengths": plan.new_lengths, "new_seq_offsets": plan.new_x_offsets,
            "new_max_seq_len": plan.new_max_seq_len, "offsets_head": plan.offsets_head,
            "offsets_tail": plan.offsets_tail, "total_dropped": plan.total_dropped,
            "total_kept": plan.total_kept, "total_prefix": plan.total_prefix, "total_rest": plan.total_rest,
            "x": x, "y": y, "dy": dy, "dx": dx,
        }
        if num_targets is not None:
            case["num_targets"] = num_targets
        if plan.offsets_prefix is not None:
            case["offsets_prefix"] = plan.offsets_prefix
            case["offsets_rest"] = plan.offsets_rest
        write_case(os.path.join(out, name + ".smxg"), case)
        print("wrote", name)


# ---------------------------------------------------------------- FP8 (fbgemm_gpu HSTU)

X_DTYPES = {"bf16": (0, torch.bfloat16), "f16": (1, torch.float16), "f32": (2, torch.float32)}


def load_fbgemm_hstu(fbgemm):
    path = fbgemm
    if os.path.isdir(path):
        path = os.path.join(path, "fbgemm_gpu", "experimental", "hstu", "hstu", "cuda_hstu_attention.py")
    if not os.path.isfile(path):
        return None, "no FBGEMM HSTU file at " + path
    if not hasattr(torch, "float8_e4m3fn"):
        return None, "torch %s has no float8_e4m3fn" % torch.__version__
    if not torch.cuda.is_available():
        return None, "no CUDA device (fbgemm's quantizers allocate on cuda)"
    _module("fbgemm_hstu_peer", package=True)
    _module("fbgemm_hstu_peer.library")
    return _module("fbgemm_hstu_peer.cuda_hstu_attention", path), None


FP8_CASES = [
    # name, lengths, H, D, quant_mode, block_size (mode 2), dtype, value scale
    ("fp8_mode0_bf16", [5, 9, 0, 3], 2, 8, 0, None, "bf16", 200.0),
    ("fp8_mode1_bf16", [130, 1, 257, 40], 2, 8, 1, None, "bf16", 3.0),
    ("fp8_mode1_f16", [129, 7, 3], 2, 4, 1, None, "f16", 0.01),
    ("fp8_mode1_f32", [140, 5], 1, 4, 1, None, "f32", 2.0),
    ("fp8_mode2_bf16_block4", [9, 4, 0, 1, 13], 3, 8, 2, 4, "bf16", 5.0),
    ("fp8_mode2_f16_block64", [70, 3, 129], 2, 4, 2, 64, "f16", 1.0),
    ("fp8_mode2_bf16_block128", [130, 2], 2, 4, 2, 128, "bf16", 1e-3),
    ("fp8_mode3_bf16", [7, 12, 1, 5], 3, 8, 3, None, "bf16", 4.0),
    ("fp8_mode3_f32", [6, 9], 2, 8, 3, None, "f32", 0.5),
    ("fp8_mode4_bf16", [7, 12, 1, 5], 3, 8, 4, None, "bf16", 4.0),
    ("fp8_mode4_f16", [10, 3], 2, 8, 4, None, "f16", 30.0),
    ("fp8_mode4_f32", [4, 8], 2, 4, 4, None, "f32", 1.0),
    ("fp8_mode5_bf16", [7, 0, 12, 5], 3, 8, 5, None, "bf16", 4.0),
    ("fp8_mode5_f16", [9, 4], 2, 8, 5, None, "f16", 1e-4),
    ("fp8_zero_bf16", [4, 6], 2, 4, 3, None, "bf16", 0.0),
]


def gen_fp8(fbgemm, out):
    hstu, why = load_fbgemm_hstu(fbgemm)
    if hstu is None:
        print("SKIPPED fp8 cases:", why, file=sys.stderr)
        return
    fp8 = torch.float8_e4m3fn
    g = torch.Generator().manual_seed(4321)
    for name, lengths, heads, dim, mode, block, dtype_name, scale in FP8_CASES:
        dtype_code, dtype = X_DTYPES[dtype_name]
        offsets = _complete_cumsum(torch.tensor(lengths, dtype=torch.int64)).to(torch.int32).cuda()
        total = int(offsets[-1])
        x = (torch.randn(total, heads, dim, generator=g, dtype=torch.float64) * scale)
        # a few outliers so that the per-group scales differ
        x = x * torch.where(torch.rand(x.shape, generator=g) < 0.05, 8.0, 1.0).double()
        x = x.to(dtype).cuda()
        base = {"x": x, "x_dtype": dtype_code, "seq_offsets": offsets, "quant_mode": mode}
        if mode == 0:
            cases = {name: dict(base, transposed=0, block_size=128, x_fp8=x.to(fp8).double(),
                                descale=torch.tensor([1.0], dtype=torch.float32))}
        elif mode == 1:
            q, d, qt, dt, cu = hstu.quantize_for_two_directions(x, offsets, fp8_type=fp8)
            assert d.shape == (heads, total + 128) and bool((d[:, total:] == 0).all()), "x_descale padding"
            cases = {name + "_rows": dict(base, transposed=0, block_size=128, x_fp8=q.double(), descale=d[:, :total]),
                     name + "_transposed": dict(base, transposed=1, block_size=128, x_fp8=qt.double(),
                                                descale=dt, descale_offsets=cu)}
        elif mode == 2:
            q, d, cu = hstu.quantize_for_block_scale(x, offsets, block_size=block, fp8_type=fp8)
            cases = {name: dict(base, transposed=0, block_size=block, x_fp8=q.double(), descale=d,
                                descale_offsets=cu)}
        else:
            q, d = hstu.quantize_for_head_batch_tensor(x, offsets, quant_mode=mode, fp8_type=fp8)
            cases = {name: dict(base, transposed=0, block_size=128, x_fp8=q.double(), descale=d)}
        for case_name, case in cases.items():
            case["descale"] = case["descale"].float().reshape(case["descale"].shape)
            write_case(os.path.join(out, case_name + ".smxg"), case)
            print("wrote", case_name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", required=True, help="directory holding tzrec/ (TorchEasyRec)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fbgemm", default=None,
                        help="FBGEMM checkout or its cuda_hstu_attention.py (default: <peers>/FBGEMM)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    gen_truncation(args.peers, args.out)
    gen_fp8(args.fbgemm or os.path.join(args.peers, "FBGEMM"), args.out)


if __name__ == "__main__":
    main()

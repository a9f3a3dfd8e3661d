"""seqmix.hstu_attention / seqmix.hstu_mha through torch.ops.seqmix against a dense pure-torch
reference of the generative-recommenders mask and TorchEasyRec's SLA mask (include/seqmix/hstu.h)."""

import ast
import inspect
import os

import pytest
import torch

import seqmix
from conftest import REPO, load_peer_module, peer_path, register_fbgemm_jagged_ops

F64 = torch.float64
TORCH_2_1 = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 1)


def reference_mask(n, targets, causal, contextual_seq_len, max_attn_len, min_full_attn_seq_len, sla_k1, sla_k2):
    """[n, n] bool mask of one sequence with `targets` target tokens (None: no num_targets)."""
    i = torch.arange(n).view(n, 1)
    j = torch.arange(n).view(1, n)
    if sla_k1 > 0 or sla_k2 > 0:
        k2 = max(sla_k2, contextual_seq_len)
        history = n - (targets or 0)
        history_row = ((j < torch.clamp(i + 1, max=k2)) | ((j >= torch.clamp(i - sla_k1 + 1, min=k2)) & (j <= i)))
        target_row = j < history
        return torch.where(i < history, history_row, target_row)
    ids = torch.arange(n)
    max_id = n
    if contextual_seq_len > 0:
        ids = torch.clamp(ids - contextual_seq_len + 1, min=0)
        max_id = n - contextual_seq_len + 1
    if targets is not None:
        max_id -= targets
        ids = torch.clamp(ids, max=max_id)
    row, col = ids.view(n, 1), ids.view(1, n)
    dist = row - col
    if not causal:
        dist = dist.abs()
    mask = (i == j) | (dist > 0)
    if max_attn_len > 0:
        within = dist <= max_attn_len
        if min_full_attn_seq_len > 0:
            within = within | (row >= max_id - min_full_attn_seq_len)
        mask = mask & within
    if contextual_seq_len > 0:
        mask = mask | ((row == 0) & (col < max_id))
    return mask


def reference(q, k, v, seq_offsets, max_seq_len, alpha=1.0, num_targets=None, causal=True, contextual_seq_len=0,
              max_attn_len=0, min_full_attn_seq_len=0, scaling_seqlen=-1, sla_k1=0, sla_k2=0):
    divisor = max_seq_len if scaling_seqlen == -1 else scaling_seqlen
    offsets = seq_offsets.tolist()
    rows = []
    for b in range(len(offsets) - 1):
        s, e = offsets[b], offsets[b + 1]
        targets = None if num_targets is None else int(num_targets[b])
        mask = reference_mask(e - s, targets, causal, contextual_seq_len, max_attn_len, min_full_attn_seq_len,
                              sla_k1, sla_k2)
        scores = alpha * torch.einsum("ihd,jhd->hij", q[s:e], k[s:e])
        p = torch.nn.functional.silu(scores) / divisor * mask
        rows.append(torch.einsum("hij,jhd->ihd", p, v[s:e]))
    return torch.cat(rows) if rows else v.new_zeros(v.shape)


LENGTHS = [5, 0, 1, 8]
CONFIGS = {
    "causal": dict(),
    "alpha_scaling": dict(alpha=0.37, scaling_seqlen=3),
    "targets": dict(num_targets=[2, 0, 1, 3]),
    "contextual": dict(contextual_seq_len=2),
    "contextual_targets": dict(contextual_seq_len=2, num_targets=[1, 0, 0, 2]),
    "window": dict(max_attn_len=2),
    "window_min_full": dict(max_attn_len=1, min_full_attn_seq_len=2, num_targets=[1, 0, 1, 2]),
    "noncausal": dict(causal=False, num_targets=[2, 0, 0, 1]),
    "noncausal_window_contextual": dict(causal=False, max_attn_len=2, contextual_seq_len=1),
    "sla": dict(sla_k1=2, sla_k2=1),
    "sla_targets_contextual": dict(sla_k1=3, sla_k2=1, contextual_seq_len=2, num_targets=[2, 0, 1, 3]),
}


def make_inputs(lengths=LENGTHS, heads=2, dqk=4, dv=3, dtype=F64, offsets_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, d, generator=g, dtype=dtype) for d in (dqk, dqk, dv))
    seq_offsets = torch.tensor([0] + lengths, dtype=offsets_dtype).cumsum(0).to(offsets_dtype)
    return q, k, v, seq_offsets


def options(name, offsets_dtype=torch.int64):
    config = dict(CONFIGS[name])
    if "num_targets" in config:
        config["num_targets"] = torch.tensor(config["num_targets"], dtype=offsets_dtype)
    return config


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_and_grads_match_reference_f64(name):
    q, k, v, seq_offsets = make_inputs()
    config = options(name)
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = seqmix.hstu_attention(*inputs, seq_offsets, 9, **config)
    expected = reference(*ref_inputs, seq_offsets, 9, **config)
    assert out.dtype == F64 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, dout)
    expected_grads = torch.autograd.grad(expected, ref_inputs, dout)
    for name_, got, want in zip("qkv", grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=f"d{name_}")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_forward(dtype, tol):
    q, k, v, seq_offsets = make_inputs(offsets_dtype=torch.int32)
    config = options("contextual_targets", torch.int32)
    out = seqmix.hstu_attention(q.to(dtype), k.to(dtype), v.to(dtype), seq_offsets, 8, 0.5, **config)
    assert out.dtype == dtype
    expected = reference(*(t.to(dtype).to(F64) for t in (q, k, v)), seq_offsets, 8, 0.5, **config)
    torch.testing.assert_close(out.to(F64), expected, atol=tol, rtol=tol)


def test_strided_inputs_match_contiguous():
    q, k, v, seq_offsets = make_inputs()
    wide = torch.randn(q.shape[0], 2, 9, dtype=F64)
    q_strided = wide[:, :, :4]
    k_strided = wide[:, :, 4:8]
    expected = seqmix.hstu_attention(q_strided.contiguous(), k_strided.contiguous(), v, seq_offsets, 8)
    torch.testing.assert_close(seqmix.hstu_attention(q_strided, k_strided, v, seq_offsets, 8), expected,
                               atol=0, rtol=0)


@pytest.mark.parametrize("name", ["targets", "contextual_targets", "window_min_full", "sla_targets_contextual"])
def test_gradcheck(name):
    q, k, v, seq_offsets = make_inputs(lengths=[3, 0, 4], heads=1, dqk=2, dv=2)
    config = options(name)
    if "num_targets" in config:
        config["num_targets"] = config["num_targets"][:3]
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: seqmix.hstu_attention(q, k, v, seq_offsets, 5, 0.8, **config),
                                    inputs)


GR_HSTU_MHA_ARGS = ["max_seq_len", "alpha", "q", "k", "v", "seq_offsets", "causal", "dropout_pr", "training",
                    "num_targets", "attn_scale", "max_attn_len", "contextual_seq_len", "min_full_attn_seq_len",
                    "sort_by_length", "kernel", "enable_tma"]
TZREC_EXTRA_ARGS = ["attn_func", "scaling_seqlen"]


def peer_hstu_mha_arguments(peer, relative):
    """{name: default source text} of the peer's hstu_mha, read from its source (importing it needs Triton)."""
    source = peer_path(peer, relative)
    if source is None:
        pytest.skip(f"{peer} checkout not found (set SEQMIX_PEERS)")
    tree = ast.parse(open(source).read())
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "hstu_mha")
    names = [a.arg for a in fn.args.args]
    defaults = [None] * (len(names) - len(fn.args.defaults)) + [ast.unparse(d) for d in fn.args.defaults]
    return dict(zip(names, defaults))


def test_hstu_mha_signature_is_generative_recommenders_then_torcheasyrec_extras():
    parameters = inspect.signature(seqmix.hstu_mha).parameters
    assert list(parameters) == GR_HSTU_MHA_ARGS + TZREC_EXTRA_ARGS
    for peer, relative in [("gr", "generative_recommenders/ops/hstu_attention.py"),
                           ("tzrec", "tzrec/ops/hstu_attention.py")]:
        if peer_path(peer, relative) is None:
            continue
        arguments = peer_hstu_mha_arguments(peer, relative)
        if peer == "gr":
            assert list(arguments) == GR_HSTU_MHA_ARGS
        assert set(arguments) <= set(parameters), peer
        for name, default in arguments.items():
            if default is not None and name != "kernel":  # kernel: each peer's own enum, ignored here
                assert repr(parameters[name].default) == default, (peer, name)


def test_hstu_mha_forwards_to_hstu_attention():
    q, k, v, seq_offsets = make_inputs()
    num_targets = torch.tensor([2, 0, 1, 3])
    out = seqmix.hstu_mha(9, 0.5, q, k, v, seq_offsets, True, 0.0, True, num_targets, None, 2, 1, 1)
    expected = reference(q, k, v, seq_offsets, 9, 0.5, num_targets=num_targets, max_attn_len=2,
                         contextual_seq_len=1, min_full_attn_seq_len=1)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    # dropout is inactive outside training
    torch.testing.assert_close(seqmix.hstu_mha(9, 0.5, q, k, v, seq_offsets, dropout_pr=0.3, training=False),
                               reference(q, k, v, seq_offsets, 9, 0.5), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(seqmix.hstu_mha(9, 0.5, q, k, v, seq_offsets, scaling_seqlen=4),
                               reference(q, k, v, seq_offsets, 9, 0.5, scaling_seqlen=4), atol=1e-12, rtol=1e-10)
    per_token = torch.rand(q.shape[0], dtype=F64)
    torch.testing.assert_close(seqmix.hstu_mha(9, 0.5, q, k, v, seq_offsets, attn_scale=per_token),
                               reference(q, k, v, seq_offsets, 9, 0.5, scaling_seqlen=1) * per_token.view(-1, 1, 1),
                               atol=1e-12, rtol=1e-10)


def test_hstu_mha_unsupported_options_raise():
    q, k, v, seq_offsets = make_inputs()
    with pytest.raises(NotImplementedError, match="dropout_pr"):
        seqmix.hstu_mha(9, 1.0, q, k, v, seq_offsets, dropout_pr=0.1, training=True)
    with pytest.raises(NotImplementedError, match="attn_func"):
        seqmix.hstu_mha(9, 1.0, q, k, v, seq_offsets, attn_func=torch.zeros(2, 3, 14, dtype=torch.int32))
    with pytest.raises(ValueError, match="attn_scale"):
        seqmix.hstu_mha(9, 1.0, q, k, v, seq_offsets, attn_scale=torch.ones(3))
    with pytest.raises(ValueError, match="attn_scale"):
        seqmix.hstu_mha(9, 1.0, q, k, v, seq_offsets, attn_scale=torch.ones(()), scaling_seqlen=2)


# hstu_mha keyword arguments; "attn_scale": "scalar" / "per_token" (GR only), num_targets as lists.
PEER_CONFIGS = {
    "causal": dict(),
    "targets": dict(num_targets=[2, 0, 1, 3]),
    "contextual_targets": dict(contextual_seq_len=2, num_targets=[1, 0, 0, 2]),
    "window": dict(max_attn_len=2),
    "window_min_full_targets": dict(max_attn_len=1, min_full_attn_seq_len=2, num_targets=[1, 0, 1, 2]),
    "contextual_window": dict(max_attn_len=2, contextual_seq_len=1),
    "attn_scale_scalar": dict(attn_scale="scalar", num_targets=[2, 0, 1, 3]),
    "attn_scale_per_token": dict(attn_scale="per_token", contextual_seq_len=1),
    "scaling_seqlen": dict(scaling_seqlen=5, num_targets=[2, 0, 1, 3]),
    "noncausal": dict(causal=False, num_targets=[2, 0, 0, 1]),
}
PEER_REFERENCES = {
    "gr": "generative_recommenders/ops/pytorch/pt_hstu_attention.py",
    "tzrec": "tzrec/ops/_pytorch/pt_hstu_attention.py",
}


def peer_cases():
    """(peer, config name) pairs the peer's reference takes: GR has attn_scale but no scaling_seqlen and
    asserts causal; TorchEasyRec has scaling_seqlen but no attn_scale."""
    for peer in sorted(PEER_REFERENCES):
        for name, config in sorted(PEER_CONFIGS.items()):
            if peer == "gr" and ("scaling_seqlen" in config or config.get("causal") is False):
                continue
            if peer == "tzrec" and "attn_scale" in config:
                continue
            yield peer, name


@pytest.mark.parametrize("peer,name", list(peer_cases()))
def test_hstu_mha_matches_peer_pytorch_reference(peer, name):
    """The peers' own pytorch_hstu_mha (their CPU fallback) with fbgemm's two jagged ops provided by
    conftest: outputs and gradients in float64."""
    config = dict(PEER_CONFIGS[name])
    module = load_peer_module(peer, PEER_REFERENCES[peer])
    if module is None:
        pytest.skip(f"{peer} checkout not found (set SEQMIX_PEERS)")
    if not register_fbgemm_jagged_ops():
        pytest.skip("torch.library cannot register the fbgemm jagged ops' stand-ins in this torch")
    q, k, v, seq_offsets = make_inputs()
    if "num_targets" in config:
        config["num_targets"] = torch.tensor(config["num_targets"])
    if config.get("attn_scale") == "scalar":
        config["attn_scale"] = torch.tensor(0.3, dtype=F64)
    elif config.get("attn_scale") == "per_token":
        config["attn_scale"] = torch.rand(q.shape[0], dtype=F64)
    ours = [t.clone().requires_grad_() for t in (q, k, v)]
    theirs = [t.clone().requires_grad_() for t in (q, k, v)]
    out = seqmix.hstu_mha(9, 0.7, *ours, seq_offsets, **config)
    expected = module.pytorch_hstu_mha(9, 0.7, *theirs, seq_offsets, **config)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    dout = torch.randn_like(out)
    for n, got, want in zip("qkv", torch.autograd.grad(out, ours, dout), torch.autograd.grad(expected, theirs, dout)):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10, msg=f"d{n}")


def bad_inputs():
    q, k, v, seq_offsets = make_inputs()
    ok = dict(q=q, k=k, v=v, seq_offsets=seq_offsets, max_seq_len=9)
    return [
        ("k", dict(ok, k=k[:, :1])),
        ("v", dict(ok, v=v[:-1])),
        ("q", dict(ok, q=q[0], k=k[0], v=v[0])),
        ("k", dict(ok, k=k.float())),
        ("seq_offsets", dict(ok, seq_offsets=seq_offsets.double())),
        ("seq_offsets", dict(ok, seq_offsets=seq_offsets.flip(0))),
        ("seq_offsets", dict(ok, seq_offsets=seq_offsets[:-1])),
        ("num_targets", dict(ok, num_targets=torch.tensor([1, 0, 0]))),
        ("num_targets", dict(ok, num_targets=torch.tensor([6, 0, 0, 0]))),
        ("max_seq_len", dict(ok, max_seq_len=0)),
        ("max_seq_len", dict(ok, max_seq_len=7)),
        ("max_attn_len", dict(ok, max_attn_len=-1)),
        ("scaling_seqlen", dict(ok, scaling_seqlen=0)),
        ("causal", dict(ok, sla_k1=2, causal=False)),
        ("q", dict(ok, q=q.to(torch.complex128), k=k.to(torch.complex128), v=v.to(torch.complex128))),
    ]


@pytest.mark.parametrize("argument,kwargs", bad_inputs(), ids=[f"{a}-{i}" for i, (a, _) in enumerate(bad_inputs())])
def test_bad_input_raises_naming_the_argument(argument, kwargs):
    with pytest.raises(RuntimeError, match=argument):
        seqmix.hstu_attention(**kwargs)


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
def test_missing_kernels_raise_not_implemented_error():
    """seqmix's "not implemented" errors arrive as NotImplementedError (a RuntimeError), the others as
    RuntimeError: the binding rethrows them as torch's own error types."""
    q, k, v, seq_offsets = make_inputs()
    fp8 = [t.to(torch.float8_e4m3fn) for t in (q, k, v)]
    with pytest.raises(NotImplementedError, match="FP8 attention"):
        seqmix.hstu_attention(*fp8, seq_offsets, 9)
    with pytest.raises(RuntimeError, match="q: expected rank 3") as error:
        seqmix.hstu_attention(q[0], k[0], v[0], seq_offsets, 9)
    assert not isinstance(error.value, NotImplementedError)


def test_meta_tensors_give_shapes_forward_and_backward():
    q, k, v, seq_offsets = (t.to("meta") for t in make_inputs(dqk=4, dv=6, dtype=torch.bfloat16))
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    out = seqmix.hstu_attention(q, k, v, seq_offsets, 9, num_targets=torch.zeros(4, dtype=torch.int64, device="meta"))
    assert out.device.type == "meta" and out.shape == (14, 2, 6) and out.dtype == torch.bfloat16
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    assert v.grad.device.type == "meta"


@pytest.mark.skipif(not TORCH_2_1, reason="torch.compile(fullgraph=True) of custom ops needs torch >= 2.1")
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 12, dtype=F64)

        def forward(self, x, seq_offsets):
            q, k, v = self.proj(x).view(x.shape[0], 3, 2, 2).unbind(1)
            return seqmix.hstu_attention(q, k, v, seq_offsets, 8, alpha=0.5, contextual_seq_len=1).sum(-1)

    torch.manual_seed(0)
    block = Block()
    x = torch.randn(13, 4, dtype=F64)
    seq_offsets = torch.tensor([0, 5, 5, 13])
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    expected = block(x, seq_offsets)
    got = compiled(x, seq_offsets)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    got.sum().backward()
    grad = block.proj.weight.grad.clone()
    block.zero_grad()
    expected.sum().backward()
    torch.testing.assert_close(grad, block.proj.weight.grad, atol=1e-12, rtol=1e-10)


@pytest.mark.skipif(not TORCH_2_1, reason="torch.export needs torch >= 2.1")
def test_torch_export_traces_through_meta():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v, seq_offsets, num_targets):
            return seqmix.hstu_attention(q, k, v, seq_offsets, 9, 0.5, num_targets=num_targets, max_attn_len=2)

    q, k, v, seq_offsets = make_inputs()
    num_targets = torch.tensor([2, 0, 1, 3])
    exported = torch.export.export(Attention(), (q, k, v, seq_offsets, num_targets))
    assert any(node.target == torch.ops.seqmix.hstu_attention.default for node in exported.graph.nodes)
    expected = reference(q, k, v, seq_offsets, 9, 0.5, num_targets=num_targets, max_attn_len=2)
    torch.testing.assert_close(exported.module()(q, k, v, seq_offsets, num_targets), expected, atol=1e-12, rtol=1e-10)


# Shapes and masks for the peers' Triton kernels on the GPU: one head dim so their autotuning compiles
# once per kernel; lengths with an empty sequence, a length-1 one and a tail past one 128-token tile.
TRITON_LENGTHS = [37, 0, 1, 300, 128, 77]
TRITON_CONFIGS = {
    "causal": dict(),
    "targets": dict(num_targets=[5, 0, 1, 64, 7, 0]),
    "contextual_targets": dict(contextual_seq_len=3, num_targets=[4, 0, 0, 30, 1, 2]),
    "window_targets": dict(max_attn_len=48, num_targets=[2, 0, 0, 20, 0, 9]),
}
PEER_TRITON_MODULES = {
    "gr": ("gr", "generative_recommenders", "generative_recommenders/ops/triton/triton_hstu_attention.py"),
    "tzrec": ("tzrec", "tzrec", "tzrec/ops/_triton/triton_hstu_attention.py"),
}


def peer_triton_hstu(peer):
    """The peer's triton_hstu_mha with its autotuning capped as bench/hstu_vs_peers.py does (the
    configs that work on triton 3.6 / torch 2.11, two per kernel), or skip."""
    checkout, package, relative = PEER_TRITON_MODULES[peer]
    path = peer_path(checkout, relative)
    if path is None:
        pytest.skip(f"{peer} checkout not found (set SEQMIX_PEERS)")
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton not installed")
    import importlib
    import sys

    sys.path.insert(0, os.path.join(REPO, "bench"))
    import hstu_vs_peers

    hstu_vs_peers.load_peer_package(package, path[: -len(relative) - 1])
    module = importlib.import_module(relative[:-3].replace("/", "."))
    hstu_vs_peers.cap_autotune(module, 2, lambda line: None)
    return module.triton_hstu_mha


def rms_ratio(got, want):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return ((got - want).square().mean().sqrt() / (want.square().mean().sqrt() + 1e-12)).item()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("peer", sorted(PEER_TRITON_MODULES))
def test_hstu_mha_matches_peer_triton(peer):
    """seqmix.hstu_mha on the GPU (bf16) against the peer's Triton hstu_mha on the same inputs, outputs
    and gradients: ours no further from the fp64 reference than the peer (times 1.25, or a bf16-level
    floor of 4e-3) and within 2e-2 RMS ratio of the peer."""
    triton_hstu_mha = peer_triton_hstu(peer)
    max_len = max(TRITON_LENGTHS)
    for name, config in TRITON_CONFIGS.items():
        q, k, v, seq_offsets = make_inputs(TRITON_LENGTHS, heads=2, dqk=128, dv=128, seed=3)
        num_targets = torch.tensor(config["num_targets"]) if "num_targets" in config else None
        kwargs = dict(num_targets=num_targets, max_attn_len=config.get("max_attn_len", 0),
                      contextual_seq_len=config.get("contextual_seq_len", 0))
        alpha = 1.0 / 128 ** 0.5
        exact = [t.clone().requires_grad_() for t in (q, k, v)]
        ref = seqmix.hstu_mha(max_len, alpha, *exact, seq_offsets, **kwargs)
        dout = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, exact, dout)
        gpu = dict(kwargs, num_targets=None if num_targets is None else num_targets.cuda())
        results = {}
        for impl in ("seqmix", peer):
            inputs = [t.to("cuda", torch.bfloat16).requires_grad_() for t in (q, k, v)]
            so = seq_offsets.cuda()
            if impl == "seqmix":
                out = seqmix.hstu_mha(max_len, alpha, *inputs, so, **gpu)
            elif peer == "gr":
                out = triton_hstu_mha(max_len, alpha, *inputs, so, **gpu)
            else:
                out = triton_hstu_mha(max_len, alpha, *inputs, so, True, **gpu)
            results[impl] = [out] + list(torch.autograd.grad(out, inputs, dout.to("cuda", torch.bfloat16)))
        line = []
        for i, what in enumerate(["out", "dq", "dk", "dv"]):
            want = [ref] + list(ref_grads)
            ours_err = rms_ratio(results["seqmix"][i], want[i])
            peer_err = rms_ratio(results[peer][i], want[i])
            between = rms_ratio(results["seqmix"][i], results[peer][i])
            line.append(f"{what} ours {ours_err:.2e} {peer} {peer_err:.2e} between {between:.2e}")
            assert ours_err <= max(1.25 * peer_err, 4e-3), (name, what, ours_err, peer_err)
            assert between <= 2e-2, (name, what, between)
        print(f"\nHSTU-TRITON-PARITY {peer} {name}: " + ", ".join(line))


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="torch without float8")
def test_quant_mode_0_is_the_reference_on_fp8_cast_operands():
    """quant_mode 0 (fbgemm's plain cast, descale 1): the FP8 emulation equals the attention on
    q, k, v cast to e4m3 (through f32, as torch), forward and backward (dout cast the same way)."""
    q, k, v, seq_offsets = make_inputs(dqk=4, dv=4, seed=3)
    cast = [t.float().to(torch.float8_e4m3fn).to(F64) for t in (q, k, v)]
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out = seqmix.hstu_attention(qr, kr, vr, seq_offsets, 9, 0.5, quant_mode=0)
    qc, kc, vc = (t.clone().requires_grad_() for t in cast)
    want = seqmix.hstu_attention(qc, kc, vc, seq_offsets, 9, 0.5)
    assert torch.equal(out, want)
    dout = torch.randn_like(out)
    out.backward(dout)
    want.backward(dout.float().to(torch.float8_e4m3fn).to(F64))
    for got, ref in ((qr.grad, qc.grad), (kr.grad, kc.grad), (vr.grad, vc.grad)):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("quant_mode", [1, 2, 3, 4, 5])
def test_quant_modes_stay_within_fp8_resolution(quant_mode):
    """Every FP8 mode moves the output by FP8's resolution (3 mantissa bits), never by O(1)."""
    q, k, v, seq_offsets = make_inputs(lengths=[40, 0, 1, 70], dqk=16, dv=16, seed=quant_mode)
    exact = seqmix.hstu_attention(q, k, v, seq_offsets, 80, 0.25)
    qr = q.clone().requires_grad_()
    out = seqmix.hstu_attention(qr, k, v, seq_offsets, 80, 0.25, quant_mode=quant_mode)
    error = ((out - exact).abs().max() / exact.abs().max()).item()
    assert 0.0 < error < 0.1
    out.sum().backward()
    assert qr.grad.shape == q.shape and torch.isfinite(qr.grad).all()


def test_bad_quant_mode_names_the_argument():
    q, k, v, seq_offsets = make_inputs()
    with pytest.raises(RuntimeError, match="quant_mode"):
        seqmix.hstu_attention(q, k, v, seq_offsets, 9, quant_mode=6)

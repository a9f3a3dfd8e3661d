"""seqmix.chunk_ttt_linear through torch.ops.seqmix against a pure-torch reference of FLA's naive
TTT-Linear (mini-batch gradient step of a LayerNorm'd linear inner model; include/seqmix/ttt.h)."""

import inspect

import pytest
import torch

import seqmix

F64 = torch.float64


def layer_norm(x, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def reference(q, k, v, w, b, eta, scale=None, eps=1e-6, chunk_size=16, initial_state=None, initial_state_bias=None,
              output_final_state=False, cu_seqlens=None):
    """Loops over sequences, heads and mini-batches; a partial last mini-batch is zero-padded with the
    learning rate of its last real token for the state update (FLA naive.py)."""
    batch, length, heads, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    if cu_seqlens is None:
        sequences = [(n, 0, length) for n in range(batch)]
    else:
        bounds = cu_seqlens.tolist()
        sequences = [(0, bounds[n], bounds[n + 1]) for n in range(len(bounds) - 1)]
    out = torch.zeros_like(v)
    states, biases = [], []
    for n, (bi, start, end) in enumerate(sequences):
        head_states, head_biases = [], []
        for h in range(heads):
            state = initial_state[n, h] if initial_state is not None else q.new_zeros(dim, dim)
            bias = initial_state_bias[n, h, 0] if initial_state_bias is not None else q.new_zeros(dim)
            for c0 in range(start, end, chunk_size):
                c1 = min(c0 + chunk_size, end)
                pad = chunk_size - (c1 - c0)

                def rows(x):
                    return torch.nn.functional.pad(x[bi, c0:c1, h], (0, 0, 0, pad))

                qc, kc, vc, etac = scale * rows(q), rows(k), rows(v), rows(eta)[:, 0]
                eta_last = eta[bi, c1 - 1, h, 0]
                kh = kc @ state + bias
                mean = kh.mean(-1, keepdim=True)
                sigma = torch.sqrt(((kh - mean) ** 2).mean(-1, keepdim=True) + eps)
                x = (kh - mean) / sigma
                g = (w[h] * x + b[h] - (vc - kc)) * w[h]
                vn = (dim * g - g.sum(-1, keepdim=True) - x * (g * x).sum(-1, keepdim=True)) / (sigma * dim)
                z = qc @ state + bias - etac[:, None] * (torch.tril(qc @ kc.T + 1) @ vn)
                state = state - eta_last * kc.T @ vn
                bias = bias - eta_last * vn.sum(0)
                out[bi, c0:c1, h] = (z + w[h] * layer_norm(z, eps) + b[h])[: c1 - c0]
            head_states.append(state)
            head_biases.append(bias.view(1, dim))
        states.append(torch.stack(head_states))
        biases.append(torch.stack(head_biases))
    if not output_final_state:
        return out, None, None
    return out, torch.stack(states), torch.stack(biases)


def make_inputs(batch=2, length=7, heads=2, dim=4, states=False, num_seqs=None, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    inputs = dict(q=randn(batch, length, heads, dim), k=randn(batch, length, heads, dim),
                  v=randn(batch, length, heads, dim), w=1 + 0.2 * randn(heads, dim), b=0.2 * randn(heads, dim),
                  eta=0.05 + 0.1 * torch.rand(batch, length, heads, 1, generator=g, dtype=dtype))
    if states:
        n = num_seqs or batch
        inputs["initial_state"] = 0.3 * randn(n, heads, dim, dim).to(F64 if dtype == F64 else torch.float32)
        inputs["initial_state_bias"] = 0.3 * randn(n, heads, 1, dim).to(F64 if dtype == F64 else torch.float32)
    return inputs


CASES = {
    "t7_c4": (dict(), dict(chunk_size=4)),
    "t7_c16_final": (dict(), dict(output_final_state=True)),
    "t8_c4_states_final": (dict(length=8, states=True), dict(chunk_size=4, output_final_state=True)),
    "t5_c2_scale_eps": (dict(length=5, heads=1, states=True), dict(chunk_size=2, scale=0.3, eps=1e-3,
                                                                    output_final_state=True)),
    "t1_c3": (dict(length=1), dict(chunk_size=3, output_final_state=True)),
    "varlen_states": (dict(batch=1, length=11, states=True, num_seqs=4),
                      dict(chunk_size=3, output_final_state=True, cu_seqlens=torch.tensor([0, 4, 4, 5, 11]))),
    "varlen_int32": (dict(batch=1, length=9),
                     dict(chunk_size=4, cu_seqlens=torch.tensor([0, 6, 9], dtype=torch.int32))),
}


def differentiable(inputs):
    return {name: t.clone().requires_grad_() for name, t in inputs.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_grads_match_reference_f64(case):
    shape, config = CASES[case]
    inputs = make_inputs(**shape)
    ours, ref = differentiable(inputs), differentiable(inputs)
    got = seqmix.chunk_ttt_linear(**ours, **config)
    want = reference(**ref, **config)
    for name, a, b in zip(["o", "final_state", "final_state_bias"], got, want):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape and a.dtype == F64, name
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9, msg=name)
    outputs = [t for t in got if t is not None]
    cotangents = [torch.randn_like(t) for t in outputs]
    grads = torch.autograd.grad(outputs, list(ours.values()), cotangents)
    want_grads = torch.autograd.grad([t for t in want if t is not None], list(ref.values()), cotangents)
    for name, a, b in zip(ours, grads, want_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=f"grad of {name}")


def test_only_final_state_used_in_loss():
    inputs = differentiable(make_inputs(length=5, states=True))
    _, final_state, final_state_bias = seqmix.chunk_ttt_linear(**inputs, chunk_size=2, output_final_state=True)
    grads = torch.autograd.grad(final_state.sum() + final_state_bias.sum(), list(inputs.values()))
    ref = differentiable(make_inputs(length=5, states=True))
    _, ref_state, ref_bias = reference(**ref, chunk_size=2, output_final_state=True)
    want = torch.autograd.grad(ref_state.sum() + ref_bias.sum(), list(ref.values()), allow_unused=True)
    for (name, t), a, b in zip(inputs.items(), grads, want):
        b = torch.zeros_like(t) if b is None else b  # q does not reach the final state
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8, msg=f"grad of {name}")


def test_float32_and_eta_as_float():
    inputs = make_inputs(dtype=torch.float32)
    inputs.pop("eta")
    o, _, _ = seqmix.chunk_ttt_linear(**inputs, eta=0.1, chunk_size=4)
    assert o.dtype == torch.float32
    ref_inputs = {name: t.to(F64) for name, t in inputs.items()}
    want, _, _ = reference(**ref_inputs, eta=torch.full_like(ref_inputs["q"][..., :1], 0.1), chunk_size=4)
    torch.testing.assert_close(o.to(F64), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("varlen", [False, True])
def test_gradcheck(varlen):
    shape = dict(batch=1, length=5, heads=1, dim=3, states=True, num_seqs=2 if varlen else None)
    inputs = make_inputs(**shape)
    cu_seqlens = torch.tensor([0, 2, 5]) if varlen else None
    names = list(inputs)

    def fn(*tensors):
        o, ht, hbt = seqmix.chunk_ttt_linear(**dict(zip(names, tensors)), chunk_size=2, output_final_state=True,
                                             cu_seqlens=cu_seqlens)
        return o, ht, hbt

    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_() for t in inputs.values()))


FLA_ARGS = ["q", "k", "v", "w", "b", "eta", "scale", "eps", "chunk_size", "initial_state", "initial_state_bias",
            "output_final_state", "cu_seqlens"]


def test_signature_matches_fla():
    assert list(inspect.signature(seqmix.chunk_ttt_linear).parameters) == FLA_ARGS


def bad_inputs():
    ok = make_inputs(states=True)
    q = ok["q"]
    return [
        ("v", dict(ok, v=q[..., :3])),
        ("k", dict(ok, k=q[:, :5])),
        ("eta", dict(ok, eta=ok["eta"][..., 0])),
        ("w", dict(ok, w=ok["w"][:1])),
        ("b", dict(ok, b=ok["b"].T)),
        ("initial_state", dict(ok, initial_state=ok["initial_state"][:1])),
        ("initial_state_bias", dict(ok, initial_state_bias=ok["initial_state_bias"][..., 0, :])),
        ("initial_state", dict(ok, initial_state=ok["initial_state"].half())),
        ("cu_seqlens", dict(ok, cu_seqlens=torch.tensor([0, 7, 14]))),
        ("chunk_size", dict(ok, chunk_size=0)),
        ("scale", dict(ok, scale=-1.0)),
        ("eps", dict(ok, eps=-1.0)),
        ("q", dict(ok, q=q.to(torch.int8))),
    ]


@pytest.mark.parametrize("argument,kwargs", bad_inputs(), ids=[f"{a}-{i}" for i, (a, _) in enumerate(bad_inputs())])
def test_bad_input_raises_naming_the_argument(argument, kwargs):
    with pytest.raises(RuntimeError, match=argument):
        seqmix.chunk_ttt_linear(**kwargs)


def test_bad_cu_seqlens_raises():
    inputs = make_inputs(batch=1, length=6)
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        seqmix.chunk_ttt_linear(**inputs, cu_seqlens=torch.tensor([0, 4, 2, 6]))
    with pytest.raises(RuntimeError, match="cu_seqlens"):
        seqmix.chunk_ttt_linear(**inputs, cu_seqlens=torch.tensor([0, 4, 5]))


@pytest.mark.parametrize("varlen", [False, True])
def test_meta_tensors_give_shapes(varlen):
    shape = dict(batch=1 if varlen else 2, length=9, heads=3, dim=8, states=True, num_seqs=3 if varlen else None)
    inputs = {name: t.to("meta").requires_grad_() for name, t in make_inputs(**shape, dtype=torch.bfloat16).items()}
    cu_seqlens = torch.zeros(4, dtype=torch.int64, device="meta") if varlen else None
    n = 3 if varlen else 2
    o, ht, hbt = seqmix.chunk_ttt_linear(**inputs, output_final_state=True, cu_seqlens=cu_seqlens)
    assert o.device.type == "meta" and o.shape == inputs["q"].shape and o.dtype == torch.bfloat16
    assert ht.shape == (n, 3, 8, 8) and hbt.shape == (n, 3, 1, 8) and ht.dtype == torch.float32
    (o.float().sum() + ht.sum() + hbt.sum()).backward()
    for name, t in inputs.items():
        assert t.grad.shape == t.shape and t.grad.dtype == t.dtype, name
    o, ht, hbt = seqmix.chunk_ttt_linear(**inputs)
    assert ht is None and hbt is None


@pytest.mark.skipif(tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 1),
                    reason="torch.compile(fullgraph=True) of custom ops needs torch >= 2.1")
def test_torch_compile_fullgraph_with_states():
    def step(inputs):
        o, final_state, final_state_bias = seqmix.chunk_ttt_linear(**inputs, chunk_size=4, output_final_state=True)
        return o.sum() + final_state.sum() + final_state_bias.sum()

    inputs = differentiable(make_inputs(length=6, states=True))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(inputs)
    grads = torch.autograd.grad(got, list(inputs.values()))
    expected = step(inputs)
    want = torch.autograd.grad(expected, list(inputs.values()))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    for name, a, b in zip(inputs, grads, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=f"grad of {name}")

"""Every op on CUDA tensors (the device run): the same result as on the CPU within bf16 tolerances
where the CUDA backend has the op, else a RuntimeError saying it has no CUDA kernel."""

import pytest
import torch

import seqmix
import test_hstu
import test_kda
import test_ttt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def hstu(dtype):
    q, k, v, seq_offsets = test_hstu.make_inputs(lengths=[70, 0, 1, 130], heads=2, dqk=64, dv=64, dtype=dtype)
    return (lambda q, k, v, seq_offsets, num_targets: seqmix.hstu_attention(
        q, k, v, seq_offsets, 130, 0.5, num_targets=num_targets, contextual_seq_len=2, max_attn_len=50),
        dict(q=q, k=k, v=v, seq_offsets=seq_offsets, num_targets=torch.tensor([3, 0, 1, 5])))


def kda(dtype):
    inputs, options = test_kda.case("gate", dtype=dtype, length=150, dk=64, dv=64)
    options["use_qk_l2norm_in_kernel"] = True

    def fn(q, k, v, g, beta, **kwargs):
        return seqmix.chunk_kda(q, k, v, g, beta, **kwargs, **options)
    return fn, inputs


def ttt(dtype):
    inputs = test_ttt.make_inputs(length=40, dim=64, states=True, dtype=dtype)
    return (lambda **kwargs: seqmix.chunk_ttt_linear(**kwargs, output_final_state=True)), inputs


OPS = {"hstu_attention": hstu, "chunk_kda": kda, "chunk_ttt_linear": ttt}


@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_matches_cpu_or_says_it_has_no_kernel(name):
    fn, inputs = OPS[name](torch.float32)
    differentiable = {n for n, t in inputs.items() if t.is_floating_point()}
    cpu = {n: t.clone().requires_grad_(n in differentiable) for n, t in inputs.items()}
    cuda = {n: t.cuda().requires_grad_(n in differentiable) for n, t in inputs.items()}
    try:
        got = fn(**cuda)
    except RuntimeError as error:
        assert "no CUDA kernel" in str(error), error
        pytest.skip(f"{name}: the CUDA backend has no kernel yet ({error})".splitlines()[0])
    want = fn(**cpu)
    got, want = ([t] if isinstance(t, torch.Tensor) else [x for x in t if x is not None] for t in (got, want))
    for a, b in zip(got, want):
        assert a.is_cuda
        torch.testing.assert_close(a.cpu(), b, atol=2e-3, rtol=2e-3)
    cotangents = [torch.randn_like(b) for b in want]
    grads = torch.autograd.grad(got, [cuda[n] for n in sorted(differentiable)], [c.cuda() for c in cotangents])
    want_grads = torch.autograd.grad(want, [cpu[n] for n in sorted(differentiable)], cotangents)
    for n, a, b in zip(sorted(differentiable), grads, want_grads):
        torch.testing.assert_close(a.cpu(), b, atol=5e-3, rtol=5e-3, msg=f"d{n}")

"""Every op on CUDA tensors (the device run): the same outputs and gradients as the CPU reference on
the same inputs where the CUDA backend has the op, else a RuntimeError saying it is not implemented."""

import pytest
import torch

import seqmix
import test_hstu
import test_kda
import test_ttt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def hstu():
    # The CUDA kernels take bf16/f16 with Dqk == Dv in {64, 128}.
    q, k, v, seq_offsets = test_hstu.make_inputs(lengths=[70, 0, 1, 130], heads=2, dqk=64, dv=64,
                                                 dtype=torch.bfloat16)
    inputs = dict(q=q, k=k, v=v, seq_offsets=seq_offsets, num_targets=torch.tensor([3, 0, 1, 5]))
    return (lambda q, k, v, seq_offsets, num_targets: seqmix.hstu_attention(
        q, k, v, seq_offsets, 130, 0.5, num_targets=num_targets, contextual_seq_len=2, max_attn_len=50)), inputs


def kda():
    inputs, options = test_kda.case("gate", dtype=torch.float32, length=150, dk=64, dv=64)
    options["use_qk_l2norm_in_kernel"] = True
    return (lambda q, k, v, g, beta, **kwargs: seqmix.chunk_kda(q, k, v, g, beta, **kwargs, **options)), inputs


def ttt():
    inputs = test_ttt.make_inputs(length=40, dim=64, states=True, dtype=torch.float32)
    return (lambda **kwargs: seqmix.chunk_ttt_linear(**kwargs, output_final_state=True)), inputs


OPS = {"hstu_attention": hstu, "chunk_kda": kda, "chunk_ttt_linear": ttt}


@pytest.mark.parametrize("name", sorted(OPS))
def test_cuda_matches_cpu_or_says_it_is_not_implemented(name):
    """By FLA's error ratio (RMS difference / RMS of the CPU result): below 1e-2 for bf16 (a few bf16
    roundings), 1e-4 for float32."""
    fn, inputs = OPS[name]()
    differentiable = sorted(n for n, t in inputs.items() if t.is_floating_point())
    cpu = {n: t.clone().requires_grad_(n in differentiable) for n, t in inputs.items()}
    cuda = {n: t.cuda().requires_grad_(n in differentiable) for n, t in inputs.items()}
    try:
        got = fn(**cuda)
    except RuntimeError as error:
        assert "not implemented" in str(error), error
        pytest.skip(f"{name}: {str(error).splitlines()[0]}")
    want = fn(**cpu)
    got, want = ([t] if isinstance(t, torch.Tensor) else [x for x in t if x is not None] for t in (got, want))
    bound = 1e-2 if inputs["q"].dtype == torch.bfloat16 else 1e-4
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.is_cuda and a.dtype == b.dtype and a.shape == b.shape
        assert test_kda.error_ratio(a, b) < bound, (f"output {i}", test_kda.error_ratio(a, b))
    cotangents = [torch.randn_like(b) for b in want]
    grads = torch.autograd.grad(got, [cuda[n] for n in differentiable], [c.cuda() for c in cotangents])
    want_grads = torch.autograd.grad(want, [cpu[n] for n in differentiable], cotangents)
    for n, a, b in zip(differentiable, grads, want_grads):
        assert test_kda.error_ratio(a, b) < bound, (f"d{n}", test_kda.error_ratio(a, b))

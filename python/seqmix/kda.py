"""KDA (Kimi Delta Attention): flash-linear-attention `fla.ops.kda.chunk_kda` semantics and signature
(include/seqmix/kda.h), so `from seqmix import chunk_kda` replaces `from fla.ops.kda import chunk_kda`."""

import warnings
from typing import Optional, Tuple

import torch


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling()


def _num_chunks(T: int, chunk_size: int, cu_seqlens: Optional[torch.Tensor],
                cu_seqlens_cpu: Optional[torch.Tensor]) -> int:
    """NT of FLA's h: ceil(T / chunk_size), or with cu_seqlens the chunks of all sequences (read on the host,
    from cu_seqlens_cpu when given, as FLA's prepare_chunk_indices)."""
    if cu_seqlens is None:
        return (T + chunk_size - 1) // chunk_size
    bounds = cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens
    return int(((bounds[1:] - bounds[:-1] + chunk_size - 1) // chunk_size).sum())


def chunk_kda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    safe_gate: bool = False,
    lower_bound: Optional[float] = None,
    disable_recompute: bool = False,
    return_intermediate_states: bool = False,
    state_v_first: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    cu_seqlens_cpu: Optional[torch.Tensor] = None,
    cp_context=None,
    **kwargs,
) -> Tuple[Optional[torch.Tensor], ...]:
    """Same arguments and return as FLA's chunk_kda: q, k [B, T, H, K], v [B, T, HV, V] (HV a multiple
    of H), g [B, T, HV, K] (log-space decay, or the raw gate input with use_gate_in_kernel), beta
    [B, T, HV], initial_state [N, HV, K, V], cu_seqlens [N + 1] with B == 1; keyword arguments A_log
    [HV] and dt_bias [HV * K] (used with use_gate_in_kernel) and chunk_size (32 or 64) as FLA's
    **kwargs -> (o [B, T, HV, V] in q's dtype, final_state [N, HV, K, V] float32 (float64 for float64
    inputs) or None), and h with return_intermediate_states. Differentiable in q, k, v, g, beta,
    initial_state, and A_log, dt_bias with the gate in kernel.

    return_intermediate_states=True (only under torch.inference_mode() and with disable_recompute=False,
    as FLA) returns (o, final_state, h): h [B, NT, HV, K, V] ([B, NT, HV, V, K] with state_v_first) is the
    state entering each chunk of chunk_size tokens (the initial state or zeros for a sequence's first
    chunk), NT = ceil(T / chunk_size); with cu_seqlens B = 1 and NT = the sum over sequences of
    ceil(len / chunk_size), each sequence's chunks consecutive; in k's dtype, as FLA's. With cu_seqlens the
    chunk count is read on the host (from cu_seqlens_cpu when given), as FLA does. Under torch.compile the
    inference-mode check is skipped (dynamo cannot trace torch.is_inference_mode_enabled); h is never
    differentiable.

    safe_gate and disable_recompute choose among FLA's kernels (safe_gate's checks are kept: it needs
    lower_bound in [-5, 0) with the gate in kernel); cu_seqlens_cpu is FLA's host copy of cu_seqlens,
    only read for the chunk count of return_intermediate_states. cp_context (context parallelism) is
    not implemented."""
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.", DeprecationWarning,
                      stacklevel=2)
        state_v_first = kwargs.pop("transpose_state_layout")
    A_log = kwargs.pop("A_log", None)
    dt_bias = kwargs.pop("dt_bias", None)
    chunk_size = kwargs.pop("chunk_size", 64)
    if kwargs:
        raise TypeError(f"seqmix.chunk_kda: unexpected keyword arguments {sorted(kwargs)}")
    if return_intermediate_states:
        # FLA's assertions and messages (FLA checks them after its forward; here before).
        if not _compiling() and not torch.is_inference_mode_enabled():
            raise AssertionError("return_intermediate_states is only allowed in inference mode")
        if disable_recompute:
            raise AssertionError("return_intermediate_states must be used with disable_recompute=False")
    if cp_context is not None:
        raise NotImplementedError("seqmix.chunk_kda: cp_context (context parallelism) is not implemented")
    if cu_seqlens is not None and q.shape[0] != 1:
        raise ValueError(f"seqmix.chunk_kda: the batch size is expected to be 1 rather than {q.shape[0]} when "
                         "using `cu_seqlens`; flatten variable-length inputs first")
    if use_gate_in_kernel:
        if A_log is None and lower_bound is None:
            raise ValueError("seqmix.chunk_kda: `A_log` must be provided when `use_gate_in_kernel=True` and "
                             "`lower_bound` is not set")
        if safe_gate and (lower_bound is None or not -5 <= lower_bound < 0):
            raise ValueError("seqmix.chunk_kda: `safe_gate=True` with `use_gate_in_kernel=True` needs `lower_bound` "
                             f"in [-5, 0), got {lower_bound}")
    else:
        # As FLA: without the fused gate, g is the decay itself and these are unused.
        A_log, dt_bias, lower_bound = None, None, None
    # One compute dtype for q, k, v, g, beta (FLA lets g and beta be float32 next to bf16 q): the widest.
    dtype = q.dtype
    for t in (k, v, g, beta):
        dtype = torch.promote_types(dtype, t.dtype)
    num_chunks = None
    if return_intermediate_states and chunk_size > 0:  # a bad chunk_size is reported by the op
        num_chunks = _num_chunks(q.shape[1], chunk_size, cu_seqlens, cu_seqlens_cpu)
    o, final_state, h = torch.ops.seqmix.chunk_kda(
        q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype), beta.to(dtype), A_log, dt_bias, scale, initial_state,
        output_final_state, use_qk_l2norm_in_kernel, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
        allow_neg_eigval, lower_bound, state_v_first, chunk_size, cu_seqlens, num_chunks,
    )
    final_state = final_state if output_final_state else None
    if return_intermediate_states:
        return o.to(q.dtype), final_state, h.to(k.dtype)
    return o.to(q.dtype), final_state

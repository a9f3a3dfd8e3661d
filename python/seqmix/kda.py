"""KDA (Kimi Delta Attention): flash-linear-attention `fla.ops.kda.chunk_kda` semantics and signature
(include/seqmix/kda.h), so `from seqmix import chunk_kda` replaces `from fla.ops.kda import chunk_kda`."""

import warnings
from typing import Optional, Tuple

import torch


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
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Same arguments and return as FLA's chunk_kda: q, k [B, T, H, K], v [B, T, HV, V] (HV a multiple
    of H), g [B, T, HV, K] (log-space decay, or the raw gate input with use_gate_in_kernel), beta
    [B, T, HV], initial_state [N, HV, K, V], cu_seqlens [N + 1] with B == 1; keyword arguments A_log
    [HV] and dt_bias [HV * K] (used with use_gate_in_kernel) and chunk_size (32 or 64) as FLA's
    **kwargs -> (o [B, T, HV, V] in q's dtype, final_state [N, HV, K, V] float32 (float64 for float64
    inputs) or None). Differentiable in q, k, v, g, beta, initial_state, and A_log, dt_bias with the
    gate in kernel.

    safe_gate and disable_recompute choose among FLA's kernels (safe_gate's checks are kept: it needs
    lower_bound in [-5, 0) with the gate in kernel); cu_seqlens_cpu is FLA's host copy of cu_seqlens
    and is not needed. return_intermediate_states and cp_context (context parallelism) are not
    implemented."""
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
        raise NotImplementedError("seqmix.chunk_kda: return_intermediate_states is not implemented")
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
    o, final_state = torch.ops.seqmix.chunk_kda(
        q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype), beta.to(dtype), A_log, dt_bias, scale, initial_state,
        output_final_state, use_qk_l2norm_in_kernel, use_gate_in_kernel, use_beta_sigmoid_in_kernel,
        allow_neg_eigval, lower_bound, state_v_first, chunk_size, cu_seqlens,
    )
    return o.to(q.dtype), (final_state if output_final_state else None)

"""TTT-Linear: flash-linear-attention `fla.ops.ttt.chunk_ttt_linear` semantics (include/seqmix/ttt.h)."""

from typing import Optional, Tuple, Union

import torch


def chunk_ttt_linear(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    eta: Union[torch.Tensor, float],
    scale: Optional[float] = None,
    eps: float = 1e-6,
    chunk_size: int = 16,
    initial_state: Optional[torch.Tensor] = None,
    initial_state_bias: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Same arguments and return as FLA's chunk_ttt_linear: q, k, v [B, T, H, K], w, b [H, K] (the
    LayerNorm affine), eta [B, T, H, 1] (or a float), initial_state [N, H, K, K],
    initial_state_bias [N, H, 1, K], cu_seqlens [N + 1] with B == 1 -> (o [B, T, H, K],
    final_state, final_state_bias), the states None unless output_final_state. States are float32
    (float64 for float64 inputs). Differentiable in every tensor input."""
    if isinstance(eta, float):
        eta = torch.full_like(q[..., :1], eta)
    o, final_state, final_state_bias = torch.ops.seqmix.chunk_ttt_linear(
        q, k, v, w, b, eta, scale, eps, chunk_size, initial_state, initial_state_bias,
        output_final_state, cu_seqlens,
    )
    if not output_final_state:
        return o, None, None
    return o, final_state, final_state_bias

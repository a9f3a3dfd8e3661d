"""HSTU attention: generative-recommenders `hstu_mha` semantics, TorchEasyRec's SLA and scaling_seqlen.
The exact mask is documented in include/seqmix/hstu.h."""

from typing import Optional

import torch


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    max_seq_len: int,
    alpha: float = 1.0,
    num_targets: Optional[torch.Tensor] = None,
    causal: bool = True,
    contextual_seq_len: int = 0,
    max_attn_len: int = 0,
    min_full_attn_seq_len: int = 0,
    scaling_seqlen: int = -1,
    sla_k1: int = 0,
    sla_k2: int = 0,
    quant_mode: int = -1,
) -> torch.Tensor:
    """Jagged HSTU attention: q, k [L, H, Dqk], v [L, H, Dv], seq_offsets [B + 1] (int32/int64),
    num_targets [B] or None -> [L, H, Dv] in q's dtype; differentiable in q, k and v.

    o_i = sum_j M_ij silu(alpha q_i . k_j) / N v_j with N = scaling_seqlen, or max_seq_len when -1.
    sla_k1 / sla_k2 > 0 select TorchEasyRec's semi-local mask (local window, global prefix).
    quant_mode 0..5 is FP8 attention as fbgemm_gpu's `hstu_attn_varlen_func(..., quant_mode=)`: q, k, v
    (bf16/f16) are quantized to e4m3 inside with that mode's scale granularity (include/seqmix/hstu_fp8.h);
    the gradients are those of the unquantized inputs. CUDA: sm_90 only; CPU: the emulation (fp64
    reference on the fake-quantized operands). -1: no quantization."""
    return torch.ops.seqmix.hstu_attention(
        q, k, v, seq_offsets, max_seq_len, alpha, num_targets, causal, contextual_seq_len,
        max_attn_len, min_full_attn_seq_len, scaling_seqlen, sla_k1, sla_k2, quant_mode,
    )


def hstu_mha(
    max_seq_len: int,
    alpha: float,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_offsets: torch.Tensor,
    causal: bool = True,
    dropout_pr: float = 0.0,
    training: bool = True,
    num_targets: Optional[torch.Tensor] = None,
    attn_scale: Optional[torch.Tensor] = None,
    max_attn_len: int = 0,
    contextual_seq_len: int = 0,
    min_full_attn_seq_len: int = 0,
    sort_by_length: bool = False,
    kernel=None,
    enable_tma: bool = False,
    attn_func: Optional[torch.Tensor] = None,
    scaling_seqlen: int = -1,
) -> torch.Tensor:
    """Drop-in for generative-recommenders' `generative_recommenders.ops.hstu_attention.hstu_mha` (same
    arguments in the same order) and for TorchEasyRec's `tzrec.ops.hstu_attention.hstu_mha` called with
    keywords, as TorchEasyRec does (its extra `attn_func` and `scaling_seqlen` come last here; it has no
    `attn_scale`). Returns [L, H, Dv] in q's dtype, differentiable in q, k, v (and attn_scale).

    attn_scale (GR): a 0-dim or per-token [L] tensor that replaces 1 / max_seq_len, as GR's PyTorch
    reference. sort_by_length, kernel and enable_tma choose among the peers' kernels and are ignored.
    dropout_pr must be 0 in training (dropout is not implemented; outside training it is the identity).
    attn_func (TorchEasyRec's arbitrary-mask tensor) is not implemented: its SLA mask is
    seqmix.hstu_attention(..., sla_k1=, sla_k2=)."""
    if dropout_pr > 0.0 and training:
        raise NotImplementedError(
            f"seqmix.hstu_mha: dropout is not implemented, dropout_pr must be 0 in training, got {dropout_pr}")
    if attn_func is not None:
        raise NotImplementedError("seqmix.hstu_mha: attn_func (arbitrary mask) is not implemented; for "
                                  "TorchEasyRec's SLA mask use seqmix.hstu_attention(..., sla_k1=, sla_k2=)")
    if attn_scale is not None:
        if scaling_seqlen != -1:
            raise ValueError("seqmix.hstu_mha: attn_scale and scaling_seqlen both set the divisor; pass one")
        if attn_scale.dim() > 1 or (attn_scale.dim() == 1 and attn_scale.shape[0] != q.shape[0]):
            raise ValueError(f"seqmix.hstu_mha: attn_scale: expected a 0-dim or [L = {q.shape[0]}] tensor, "
                             f"got shape {tuple(attn_scale.shape)}")
        scaling_seqlen = 1
    out = hstu_attention(
        q, k, v, seq_offsets, max_seq_len, alpha, num_targets=num_targets, causal=causal,
        contextual_seq_len=contextual_seq_len, max_attn_len=max_attn_len,
        min_full_attn_seq_len=min_full_attn_seq_len, scaling_seqlen=scaling_seqlen,
    )
    if attn_scale is not None:
        out = out * attn_scale.to(out.dtype).view(-1, 1, 1)
    return out

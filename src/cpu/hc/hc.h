// CPU reference of the Hyper-Connection ops (see include/seqmix/hc.h for the formulas). Arguments are
// validated by src/api/hc.cpp; everything is computed in double.
#pragma once

#include "seqmix/hc.h"

namespace seqmix::cpu {

void hc_pre_fwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView& post, const TensorView& comb,
                const TensorView& collapsed, const HcPreParams& params);
void hc_pre_bwd(const TensorView& hidden_streams, const TensorView& fn, const TensorView& base,
                const TensorView& scale, const TensorView* grad_post, const TensorView* grad_comb,
                const TensorView* grad_collapsed, const TensorView& grad_hidden_streams, const TensorView& grad_fn,
                const TensorView& grad_base, const TensorView& grad_scale, const HcPreParams& params);

void hc_post_fwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& out);
void hc_post_bwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& grad_out, const TensorView& grad_x, const TensorView& grad_residual,
                 const TensorView& grad_post, const TensorView& grad_comb);

void hc_head_fwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& out, const HcHeadParams& params);
void hc_head_bwd(const TensorView& hidden_streams, const TensorView& hc_fn, const TensorView& hc_base,
                 const TensorView& hc_scale, const TensorView& grad_out, const TensorView& grad_hidden_streams,
                 const TensorView& grad_hc_fn, const TensorView& grad_hc_base, const TensorView& grad_hc_scale,
                 const HcHeadParams& params);

}  // namespace seqmix::cpu

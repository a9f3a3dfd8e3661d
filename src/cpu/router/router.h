// CPU reference of the DeepSeek-V4 routers (see include/seqmix/router.h). Arguments, including the
// ranges of input_ids / tid2eid / indices, are validated by src/api/router.cpp.
#pragma once

#include "seqmix/router.h"

namespace seqmix::cpu {

void router_topk_fwd(const TensorView& hidden_states, const TensorView& weight,
                     const TensorView* e_score_correction_bias, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params);
void router_hash_fwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& input_ids,
                     const TensorView& tid2eid, const TensorView* logits, const TensorView& weights,
                     const TensorView& indices, const RouterParams& params);
void router_bwd(const TensorView& hidden_states, const TensorView& weight, const TensorView& indices,
                const TensorView& grad_weights, const TensorView* grad_logits, const TensorView* grad_hidden_states,
                const TensorView* grad_weight, const RouterParams& params);

}  // namespace seqmix::cpu

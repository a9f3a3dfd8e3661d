// hc_post reference: out[k] = post[k] * x + sum_j comb[j, k] * residual[j] per token, and its backward.
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/hc/hc.h"

namespace seqmix::cpu {

void hc_post_fwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& out) {
  const int64_t tokens = residual.size(0) * residual.size(1), H = residual.size(2), D = residual.size(3);
  const std::vector<double> xs = access::load(x), res = access::load(residual), po = access::load(post),
                            cb = access::load(comb);
  std::vector<double> o(static_cast<size_t>(tokens * H * D));
  parallel::parallel_for(tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const double* c = cb.data() + t * H * H;
      for (int64_t k = 0; k < H; ++k) {
        for (int64_t d = 0; d < D; ++d) {
          double acc = po[t * H + k] * xs[t * D + d];
          for (int64_t j = 0; j < H; ++j) acc += c[j * H + k] * res[(t * H + j) * D + d];
          o[(t * H + k) * D + d] = acc;
        }
      }
    }
  });
  access::store(o, out);
}

void hc_post_bwd(const TensorView& x, const TensorView& residual, const TensorView& post, const TensorView& comb,
                 const TensorView& grad_out, const TensorView& grad_x, const TensorView& grad_residual,
                 const TensorView& grad_post, const TensorView& grad_comb) {
  const int64_t tokens = residual.size(0) * residual.size(1), H = residual.size(2), D = residual.size(3);
  const std::vector<double> xs = access::load(x), res = access::load(residual), po = access::load(post),
                            cb = access::load(comb), g = access::load(grad_out);
  std::vector<double> dx(static_cast<size_t>(tokens * D)), dres(static_cast<size_t>(tokens * H * D)),
      dpost(static_cast<size_t>(tokens * H)), dcomb(static_cast<size_t>(tokens * H * H));
  parallel::parallel_for(tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const double* gt = g.data() + t * H * D;  // [k, d]
      const double* rt = res.data() + t * H * D;  // [j, d]
      const double* c = cb.data() + t * H * H;
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (int64_t k = 0; k < H; ++k) acc += po[t * H + k] * gt[k * D + d];
        dx[t * D + d] = acc;
      }
      for (int64_t k = 0; k < H; ++k) {
        double acc = 0.0;
        for (int64_t d = 0; d < D; ++d) acc += xs[t * D + d] * gt[k * D + d];
        dpost[t * H + k] = acc;
      }
      for (int64_t j = 0; j < H; ++j) {
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0.0;
          for (int64_t k = 0; k < H; ++k) acc += c[j * H + k] * gt[k * D + d];
          dres[(t * H + j) * D + d] = acc;
        }
        for (int64_t k = 0; k < H; ++k) {
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d) acc += rt[j * D + d] * gt[k * D + d];
          dcomb[t * H * H + j * H + k] = acc;
        }
      }
    }
  });
  access::store(dx, grad_x);
  access::store(dres, grad_residual);
  access::store(dpost, grad_post);
  access::store(dcomb, grad_comb);
}

}  // namespace seqmix::cpu

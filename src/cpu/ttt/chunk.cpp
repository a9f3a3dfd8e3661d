// TTT-Linear, chunked form (as FLA's chunk_ttt_linear_fwd_kernel_h + _kernel_o):
//  1. state pass, parallel over (sequence, head): W, hb at every chunk start and vn of every token;
//  2. output pass, parallel over (chunk, head): z_i = q~_i W_c + hb_c - eta_i sum_{j<=i in chunk}
//     (q~_i . k_j + 1) vn_j, then o_i = z_i + w * LN(z_i) + b.
// Memory: one [K, V] state and [V] bias per chunk, O(T / chunk_size * H * K * V).
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/ttt/inner.h"
#include "cpu/ttt/ttt.h"

namespace seqmix::cpu {

void chunk_ttt_linear_fwd(const TTTLinearConfig& c, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias,
                          const TensorView& o, const TensorView* final_state, const TensorView* final_state_bias) {
  const ttt::Inputs in = ttt::load_inputs(c, q, k, v, w, b, eta, initial_state, initial_state_bias);
  const int64_t num_seqs = static_cast<int64_t>(c.offsets.size()) - 1;
  const int64_t d = c.dim, dd = d * d;
  const std::vector<int64_t> chunk_offsets = ttt::chunk_offsets(c);
  const int64_t num_chunks = chunk_offsets.back();

  // 1. state pass
  std::vector<double> h(static_cast<size_t>(num_chunks * c.heads * dd)), hb(static_cast<size_t>(num_chunks * c.heads * d));
  std::vector<double> vn(in.v.size(), 0.0), ht(in.h0), hbt(in.hb0);
  std::vector<int64_t> chunk_seq(static_cast<size_t>(num_chunks));
  parallel::parallel_for(num_seqs * c.heads, [&](int64_t begin, int64_t end) {
    ttt::Chunk chunk(c.chunk_size, d);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / c.heads, head = item % c.heads;
      double* state = ht.data() + ttt::state_at(seq, head, c);
      double* state_bias = hbt.data() + ttt::bias_at(seq, head, c);
      int64_t index = chunk_offsets[seq];
      for (int64_t start = c.offsets[seq]; start < c.offsets[seq + 1]; start += c.chunk_size, ++index) {
        std::copy(state, state + dd, h.begin() + (index * c.heads + head) * dd);
        std::copy(state_bias, state_bias + d, hb.begin() + (index * c.heads + head) * d);
        if (head == 0) chunk_seq[static_cast<size_t>(index)] = seq;
        ttt::chunk_inner_grads(in, c, head, start, c.offsets[seq + 1], state, state_bias, chunk);
        for (int64_t i = 0; i < chunk.count; ++i) {
          std::copy(chunk.rows[i].vn.begin(), chunk.rows[i].vn.end(), vn.begin() + ttt::row_at(start + i, head, c));
        }
        ttt::chunk_state_step(in, c, head, chunk, state, state_bias);
      }
    }
  });

  // 2. output pass
  std::vector<double> out(in.v.size(), 0.0);
  parallel::parallel_for(num_chunks * c.heads, [&](int64_t begin, int64_t end) {
    std::vector<double> z(d), n(d), qi(d);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t index = item / c.heads, head = item % c.heads;
      const int64_t seq = chunk_seq[static_cast<size_t>(index)];
      const int64_t start = c.offsets[seq] + (index - chunk_offsets[seq]) * c.chunk_size;
      const int64_t stop = std::min(start + c.chunk_size, c.offsets[seq + 1]);
      const double* state = h.data() + (index * c.heads + head) * dd;
      const double* state_bias = hb.data() + (index * c.heads + head) * d;
      const double* wh = in.w.data() + head * d;
      const double* bh = in.b.data() + head * d;
      for (int64_t ti = start; ti < stop; ++ti) {
        for (int64_t a = 0; a < d; ++a) qi[a] = c.scale * in.q[ttt::row_at(ti, head, c) + a];
        const double eta_i = in.eta[ttt::eta_at(ti, head, c)];
        for (int64_t col = 0; col < d; ++col) z[col] = state_bias[col];
        for (int64_t a = 0; a < d; ++a) {
          for (int64_t col = 0; col < d; ++col) z[col] += qi[a] * state[a * d + col];
        }
        for (int64_t tj = start; tj <= ti; ++tj) {
          const double* kj = in.k.data() + ttt::row_at(tj, head, c);
          double score = 0.0;
          for (int64_t a = 0; a < d; ++a) score += qi[a] * kj[a];
          const double coef = eta_i * (score + 1.0);
          const double* vnj = vn.data() + ttt::row_at(tj, head, c);
          for (int64_t col = 0; col < d; ++col) z[col] -= coef * vnj[col];
        }
        ttt::norm_residual(z.data(), wh, bh, d, c.eps, n.data(), out.data() + ttt::row_at(ti, head, c));
      }
    }
  });
  access::store(out, o);
  access::store_optional(ht, final_state);
  access::store_optional(hbt, final_state_bias);
}

}  // namespace seqmix::cpu

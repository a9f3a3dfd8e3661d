// TTT-Linear, FLA naive.py formulation: one sequential loop per (sequence, head) over
// mini-batches padded to chunk_size rows (q = k = v = 0, eta of the padded last row = eta of the
// last real token). Inside a mini-batch it uses the dual form of naive.py:
//   z = q~ W - (eta * tril(q~ k^T)) vn + hb - tril(eta 1^T) vn,   eta indexed by the row,
// then steps W, hb with eta of the padded mini-batch's last row over all chunk_size rows.
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/ttt/inner.h"
#include "cpu/ttt/ttt.h"

namespace seqmix::cpu {

void ttt_linear_naive_fwd(const TTTLinearConfig& c, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias,
                          const TensorView& o, const TensorView* final_state, const TensorView* final_state_bias) {
  const ttt::Inputs in = ttt::load_inputs(c, q, k, v, w, b, eta, initial_state, initial_state_bias);
  const int64_t num_seqs = static_cast<int64_t>(c.offsets.size()) - 1;
  const int64_t d = c.dim, bt = c.chunk_size;
  std::vector<double> out(in.v.size(), 0.0), ht(in.h0), hbt(in.hb0);

  parallel::parallel_for(num_seqs * c.heads, [&](int64_t begin, int64_t end) {
    std::vector<double> qc(bt * d), kc(bt * d), vc(bt * d), etac(bt), attn(bt * bt), kh(d), z(d), n(d), zo(d);
    std::vector<ttt::InnerRow> rows(static_cast<size_t>(bt), ttt::InnerRow(d));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / c.heads, head = item % c.heads;
      const int64_t bos = c.offsets[seq], eos = c.offsets[seq + 1];
      const double* wh = in.w.data() + head * d;
      const double* bh = in.b.data() + head * d;
      double* state = ht.data() + ttt::state_at(seq, head, c);
      double* state_bias = hbt.data() + ttt::bias_at(seq, head, c);
      for (int64_t start = bos; start < eos; start += bt) {
        // padded mini-batch
        for (int64_t i = 0; i < bt; ++i) {
          const int64_t t = start + i;
          const bool real = t < eos;
          for (int64_t a = 0; a < d; ++a) {
            qc[i * d + a] = real ? c.scale * in.q[ttt::row_at(t, head, c) + a] : 0.0;
            kc[i * d + a] = real ? in.k[ttt::row_at(t, head, c) + a] : 0.0;
            vc[i * d + a] = real ? in.v[ttt::row_at(t, head, c) + a] : 0.0;
          }
          etac[i] = real ? in.eta[ttt::eta_at(t, head, c)] : 0.0;
        }
        etac[bt - 1] = in.eta[ttt::eta_at(ttt::eta_last_token(start + bt, eos), head, c)];

        for (int64_t i = 0; i < bt; ++i) {
          ttt::project_key(&kc[i * d], state, state_bias, d, kh.data());
          ttt::inner_grad(kh.data(), &kc[i * d], &vc[i * d], wh, bh, d, c.eps, rows[i]);
        }
        for (int64_t i = 0; i < bt; ++i) {
          for (int64_t j = 0; j < bt; ++j) {
            double s = 0.0;
            if (j <= i) {
              for (int64_t a = 0; a < d; ++a) s += qc[i * d + a] * kc[j * d + a];
            }
            attn[i * bt + j] = s;
          }
        }
        for (int64_t i = 0; i < bt && start + i < eos; ++i) {
          for (int64_t col = 0; col < d; ++col) {
            double acc = state_bias[col];
            for (int64_t a = 0; a < d; ++a) acc += qc[i * d + a] * state[a * d + col];
            for (int64_t j = 0; j <= i; ++j) acc -= etac[i] * (attn[i * bt + j] + 1.0) * rows[j].vn[col];
            z[col] = acc;
          }
          ttt::norm_residual(z.data(), wh, bh, d, c.eps, n.data(), zo.data());
          std::copy(zo.begin(), zo.end(), out.begin() + static_cast<std::ptrdiff_t>(ttt::row_at(start + i, head, c)));
        }
        const double eta_last = etac[bt - 1];
        for (int64_t j = 0; j < bt; ++j) {
          for (int64_t a = 0; a < d; ++a) {
            const double ka = eta_last * kc[j * d + a];
            for (int64_t col = 0; col < d; ++col) state[a * d + col] -= ka * rows[j].vn[col];
          }
          for (int64_t col = 0; col < d; ++col) state_bias[col] -= eta_last * rows[j].vn[col];
        }
      }
    }
  });
  access::store(out, o);
  access::store_optional(ht, final_state);
  access::store_optional(hbt, final_state_bias);
}

}  // namespace seqmix::cpu

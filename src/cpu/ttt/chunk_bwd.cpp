// TTT-Linear backward, parallel over (sequence, head). A forward state pass keeps W, hb at every
// chunk start (O(T / chunk_size * K * V) per head); the reverse sweep recomputes each chunk's rows
// from them and back-propagates, with dW, dhb carried from chunk c + 1 into chunk c:
//  output  o = z + w * n + b, n = LN(z):     dz = do + LN'(do * w);  dw += do * n, db += do
//  dual    z_i = q~_i W + hb - eta_i sum_{j<=i} (q~_i . k_j + 1) vn_j
//  update  W' = W - eta_last sum_j k_j^T vn_j,  hb' = hb - eta_last sum_j vn_j  (padded rows too)
//  inner   vn = P(g) / sigma, P(g) = g - mean(g) - x mean(g x), g = w * r, r = w * x + b - v + k,
//          x = LN(kh), kh = k W + hb. P depends on x and sigma, so dvn reaches kh three ways:
//          through g (dg = P(dvn) / sigma), through P's x (dx = -(dvn S_gx + g S_ux) / (sigma D))
//          and through 1/sigma (dsigma = -dvn . vn / sigma, dsigma/dkh = x / D).
#include <vector>

#include "common/access.h"
#include "common/parallel.h"
#include "cpu/ttt/inner.h"
#include "cpu/ttt/ttt.h"

namespace seqmix::cpu {

void chunk_ttt_linear_bwd(const TTTLinearConfig& c, const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& w, const TensorView& b, const TensorView& eta,
                          const TensorView* initial_state, const TensorView* initial_state_bias,
                          const TensorView& do_, const TensorView* dht, const TensorView* dhbt, const TensorView& dq,
                          const TensorView& dk, const TensorView& dv, const TensorView& dw, const TensorView& db,
                          const TensorView& deta, const TensorView* dh0, const TensorView* dhb0) {
  const ttt::Inputs in = ttt::load_inputs(c, q, k, v, w, b, eta, initial_state, initial_state_bias);
  const std::vector<double> dout = access::load(do_);
  const int64_t num_seqs = static_cast<int64_t>(c.offsets.size()) - 1;
  const int64_t d = c.dim, dd = d * d;
  const auto sz = [](int64_t n) { return static_cast<size_t>(n); };
  std::vector<double> dstate = access::load_optional(dht), dstate_bias = access::load_optional(dhbt);
  if (dstate.empty()) dstate.assign(in.h0.size(), 0.0);
  if (dstate_bias.empty()) dstate_bias.assign(in.hb0.size(), 0.0);

  std::vector<double> gq(in.q.size(), 0.0), gk(in.k.size(), 0.0), gv(in.v.size(), 0.0), geta(in.eta.size(), 0.0);
  // dw, db per (sequence, head), summed over sequences at the end (no shared accumulators).
  std::vector<double> gw_part(sz(num_seqs * c.heads * d), 0.0), gb_part(sz(num_seqs * c.heads * d), 0.0);

  parallel::parallel_for(num_seqs * c.heads, [&](int64_t begin, int64_t end) {
    ttt::Chunk chunk(c.chunk_size, d);
    std::vector<double> states, biases;
    std::vector<double> dvn(sz(c.chunk_size * d)), dvn_pad(sz(d)), dw_next(sz(dd)), dhb_next(sz(d));
    std::vector<double> qi(sz(d)), z(sz(d)), n(sz(d)), o(sz(d)), dn(sz(d)), dz(sz(d)), dqi(sz(d));
    std::vector<double> dg(sz(d)), dx(sz(d)), dr(sz(d)), dkh(sz(d));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t seq = item / c.heads, head = item % c.heads;
      const int64_t bos = c.offsets[seq], eos = c.offsets[seq + 1];
      const int64_t num_chunks = (eos - bos + c.chunk_size - 1) / c.chunk_size;
      const double* wh = in.w.data() + head * d;
      const double* bh = in.b.data() + head * d;
      double* gw = gw_part.data() + item * d;
      double* gb = gb_part.data() + item * d;

      // forward: the state entering every chunk
      states.assign(sz(num_chunks * dd), 0.0);
      biases.assign(sz(num_chunks * d), 0.0);
      std::vector<double> state(in.h0.begin() + ttt::state_at(seq, head, c),
                                in.h0.begin() + ttt::state_at(seq, head, c) + dd);
      std::vector<double> state_bias(in.hb0.begin() + ttt::bias_at(seq, head, c),
                                     in.hb0.begin() + ttt::bias_at(seq, head, c) + d);
      for (int64_t ci = 0; ci < num_chunks; ++ci) {
        std::copy(state.begin(), state.end(), states.begin() + ci * dd);
        std::copy(state_bias.begin(), state_bias.end(), biases.begin() + ci * d);
        ttt::chunk_inner_grads(in, c, head, bos + ci * c.chunk_size, eos, state.data(), state_bias.data(), chunk);
        ttt::chunk_state_step(in, c, head, chunk, state.data(), state_bias.data());
      }

      // reverse: dW, dhb hold the gradient of the state leaving chunk ci
      std::vector<double> dW(dstate.begin() + ttt::state_at(seq, head, c),
                             dstate.begin() + ttt::state_at(seq, head, c) + dd);
      std::vector<double> dhb(dstate_bias.begin() + ttt::bias_at(seq, head, c),
                              dstate_bias.begin() + ttt::bias_at(seq, head, c) + d);
      for (int64_t ci = num_chunks - 1; ci >= 0; --ci) {
        const double* W = states.data() + ci * dd;
        const double* hb = biases.data() + ci * d;
        const int64_t start = bos + ci * c.chunk_size;
        ttt::chunk_inner_grads(in, c, head, start, eos, W, hb, chunk);
        const int64_t count = chunk.count;
        std::fill(dvn.begin(), dvn.end(), 0.0);
        dw_next = dW;  // W' = W - ..., so dW flows to the chunk's input state unchanged
        dhb_next = dhb;

        // state update
        const double eta_last = in.eta[ttt::eta_at(chunk.eta_last_token, head, c)];
        double deta_last = 0.0;
        for (int64_t j = 0; j < count; ++j) {
          const double* kj = in.k.data() + ttt::row_at(start + j, head, c);
          double* dkj = gk.data() + ttt::row_at(start + j, head, c);
          const std::vector<double>& vnj = chunk.rows[j].vn;
          for (int64_t a = 0; a < d; ++a) {
            double dw_vn = 0.0;
            for (int64_t col = 0; col < d; ++col) dw_vn += dW[a * d + col] * vnj[col];
            dkj[a] -= eta_last * dw_vn;
            deta_last -= kj[a] * dw_vn;
          }
          for (int64_t col = 0; col < d; ++col) {
            double k_dw = dhb[col];
            for (int64_t a = 0; a < d; ++a) k_dw += kj[a] * dW[a * d + col];
            dvn[j * d + col] -= eta_last * k_dw;
            deta_last -= dhb[col] * vnj[col];
          }
        }
        for (int64_t col = 0; col < d; ++col) {
          dvn_pad[col] = -eta_last * dhb[col];
          deta_last -= static_cast<double>(chunk.pad_count) * dhb[col] * chunk.pad.vn[col];
        }
        geta[ttt::eta_at(chunk.eta_last_token, head, c)] += deta_last;

        // outputs of the chunk's real rows
        for (int64_t i = 0; i < count; ++i) {
          const size_t at_i = ttt::row_at(start + i, head, c);
          const double eta_i = in.eta[ttt::eta_at(start + i, head, c)];
          for (int64_t a = 0; a < d; ++a) qi[a] = c.scale * in.q[at_i + a];
          for (int64_t col = 0; col < d; ++col) z[col] = hb[col];
          for (int64_t a = 0; a < d; ++a) {
            for (int64_t col = 0; col < d; ++col) z[col] += qi[a] * W[a * d + col];
          }
          for (int64_t j = 0; j <= i; ++j) {
            const double* kj = in.k.data() + ttt::row_at(start + j, head, c);
            double score = 0.0;
            for (int64_t a = 0; a < d; ++a) score += qi[a] * kj[a];
            for (int64_t col = 0; col < d; ++col) z[col] -= eta_i * (score + 1.0) * chunk.rows[j].vn[col];
          }
          const double sigma_z = ttt::norm_residual(z.data(), wh, bh, d, c.eps, n.data(), o.data());
          const double* doi = dout.data() + at_i;
          for (int64_t a = 0; a < d; ++a) {
            gw[a] += doi[a] * n[a];
            gb[a] += doi[a];
            dn[a] = doi[a] * wh[a];
            dz[a] = doi[a];
          }
          ttt::layer_norm_backward(dn.data(), n.data(), sigma_z, d, dz.data());

          for (int64_t a = 0; a < d; ++a) {
            double acc = 0.0;
            for (int64_t col = 0; col < d; ++col) {
              acc += W[a * d + col] * dz[col];
              dw_next[a * d + col] += qi[a] * dz[col];
            }
            dqi[a] = acc;
          }
          for (int64_t col = 0; col < d; ++col) dhb_next[col] += dz[col];
          double deta_i = 0.0;
          for (int64_t j = 0; j <= i; ++j) {
            const double* kj = in.k.data() + ttt::row_at(start + j, head, c);
            double* dkj = gk.data() + ttt::row_at(start + j, head, c);
            double score = 0.0, dz_vn = 0.0;
            for (int64_t a = 0; a < d; ++a) score += qi[a] * kj[a];
            for (int64_t col = 0; col < d; ++col) {
              dz_vn += dz[col] * chunk.rows[j].vn[col];
              dvn[j * d + col] -= eta_i * (score + 1.0) * dz[col];
            }
            deta_i -= (score + 1.0) * dz_vn;
            const double dscore = -eta_i * dz_vn;
            for (int64_t a = 0; a < d; ++a) {
              dqi[a] += dscore * kj[a];
              dkj[a] += dscore * qi[a];
            }
          }
          geta[ttt::eta_at(start + i, head, c)] += deta_i;
          for (int64_t a = 0; a < d; ++a) gq[at_i + a] += c.scale * dqi[a];
        }

        // inner loss gradient vn of every row (the padded rows as one row times pad_count)
        const auto inner_backward = [&](const ttt::InnerRow& row, const double* u, const double* kj, double* dkj,
                                        double* dvj, double mult) {
          std::fill(dg.begin(), dg.end(), 0.0);
          ttt::layer_norm_backward(u, row.x.data(), row.sigma, d, dg.data());
          double s_gx = 0.0, s_ux = 0.0, s_uvn = 0.0;
          for (int64_t a = 0; a < d; ++a) {
            s_gx += row.g[a] * row.x[a];
            s_ux += u[a] * row.x[a];
            s_uvn += u[a] * row.vn[a];
          }
          const double dsigma = -s_uvn / row.sigma;
          for (int64_t a = 0; a < d; ++a) {
            dx[a] = -(u[a] * s_gx + row.g[a] * s_ux) / (row.sigma * static_cast<double>(d));
            dr[a] = wh[a] * dg[a];
            gw[a] += mult * (row.r[a] * dg[a] + row.x[a] * dr[a]);
            gb[a] += mult * dr[a];
            dx[a] += wh[a] * dr[a];
            dkh[a] = dsigma * row.x[a] / static_cast<double>(d);
          }
          ttt::layer_norm_backward(dx.data(), row.x.data(), row.sigma, d, dkh.data());
          for (int64_t col = 0; col < d; ++col) dhb_next[col] += mult * dkh[col];
          if (!kj) return;
          for (int64_t a = 0; a < d; ++a) {
            dvj[a] -= dr[a];
            double acc = dr[a];
            for (int64_t col = 0; col < d; ++col) {
              acc += W[a * d + col] * dkh[col];
              dw_next[a * d + col] += kj[a] * dkh[col];
            }
            dkj[a] += acc;
          }
        };
        for (int64_t j = 0; j < count; ++j) {
          const size_t at_j = ttt::row_at(start + j, head, c);
          inner_backward(chunk.rows[j], dvn.data() + j * d, in.k.data() + at_j, gk.data() + at_j, gv.data() + at_j,
                         1.0);
        }
        if (chunk.pad_count > 0) {
          inner_backward(chunk.pad, dvn_pad.data(), nullptr, nullptr, nullptr, static_cast<double>(chunk.pad_count));
        }
        dW.swap(dw_next);
        dhb.swap(dhb_next);
      }
      std::copy(dW.begin(), dW.end(), dstate.begin() + ttt::state_at(seq, head, c));
      std::copy(dhb.begin(), dhb.end(), dstate_bias.begin() + ttt::bias_at(seq, head, c));
    }
  });

  std::vector<double> gw_total(sz(c.heads * d), 0.0), gb_total(sz(c.heads * d), 0.0);
  for (int64_t seq = 0; seq < num_seqs; ++seq) {
    for (int64_t i = 0; i < c.heads * d; ++i) {
      gw_total[sz(i)] += gw_part[sz(seq * c.heads * d + i)];
      gb_total[sz(i)] += gb_part[sz(seq * c.heads * d + i)];
    }
  }
  access::store(gq, dq);
  access::store(gk, dk);
  access::store(gv, dv);
  access::store(gw_total, dw);
  access::store(gb_total, db);
  access::store(geta, deta);
  access::store_optional(dstate, dh0);
  access::store_optional(dstate_bias, dhb0);
}

}  // namespace seqmix::cpu

// KDA: the chunked and recurrent forwards against a brute-force recurrence written here, varlen
// against a per-sequence loop, GVA against expanded heads, the backward against fp64 finite
// differences in every option combination, golden parity with FLA's naive references, bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "seqmix/kda.h"
#include "test_util.h"

namespace seqmix {
namespace {

using testing::expect_error;

enum class GateMode { none, softplus, softplus_no_bias, lower_bound, lower_bound_no_A, lower_bound_no_A_no_bias };
enum class BetaMode { plain, sigmoid, neg_eigval };

struct Case {
  int64_t B = 1, T = 5, H = 1, HV = 1, K = 4, V = 3;
  std::vector<int64_t> cu_seqlens;  // empty: none
  bool l2norm = false;
  GateMode gate = GateMode::none;
  BetaMode beta = BetaMode::plain;
  bool initial_state = false;
  bool final_state = false;
  bool state_v_first = false;
  bool intermediate_states = false;  // FLA's h (return_intermediate_states): chunk_kda_fwd only
  int64_t chunk_size = 64;
  std::optional<double> scale;

  int64_t N() const { return cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1; }
  bool has_A_log() const { return gate == GateMode::softplus || gate == GateMode::softplus_no_bias || gate == GateMode::lower_bound; }
  bool has_dt_bias() const {
    return gate == GateMode::softplus || gate == GateMode::lower_bound || gate == GateMode::lower_bound_no_A;
  }
  bool lower_bound() const { return gate >= GateMode::lower_bound; }
  // Chunks of each sequence, laid out as FLA's h: [B, ceil(T / chunk_size)] or [1, sum of ceil(len / chunk_size)].
  int64_t chunks_per_row() const {
    if (cu_seqlens.empty()) return (T + chunk_size - 1) / chunk_size;
    int64_t chunks = 0;
    for (size_t n = 0; n + 1 < cu_seqlens.size(); ++n)
      chunks += (cu_seqlens[n + 1] - cu_seqlens[n] + chunk_size - 1) / chunk_size;
    return chunks;
  }
  std::vector<int64_t> intermediate_sizes() const {
    const int64_t rows = cu_seqlens.empty() ? B : 1;
    return state_v_first ? std::vector<int64_t>{rows, chunks_per_row(), HV, V, K}
                         : std::vector<int64_t>{rows, chunks_per_row(), HV, K, V};
  }
  std::vector<int64_t> state_sizes() const {
    return state_v_first ? std::vector<int64_t>{N(), HV, V, K} : std::vector<int64_t>{N(), HV, K, V};
  }
  KdaParams params() const {
    KdaParams p;
    p.scale = scale;
    p.output_final_state = final_state;
    p.use_qk_l2norm_in_kernel = l2norm;
    p.use_gate_in_kernel = gate != GateMode::none;
    if (lower_bound()) p.lower_bound = -3.0;
    p.use_beta_sigmoid_in_kernel = beta != BetaMode::plain;
    p.allow_neg_eigval = beta == BetaMode::neg_eigval;
    p.state_v_first = state_v_first;
    p.chunk_size = chunk_size;
    return p;
  }
  std::string name() const {
    std::string s = "B" + std::to_string(B) + " T" + std::to_string(T) + " H" + std::to_string(H) + " HV" +
                    std::to_string(HV) + " K" + std::to_string(K) + " V" + std::to_string(V) + " gate" +
                    std::to_string(static_cast<int>(gate)) + " beta" + std::to_string(static_cast<int>(beta));
    if (!cu_seqlens.empty()) s += " varlen";
    if (l2norm) s += " l2norm";
    if (initial_state) s += " h0";
    if (final_state) s += " ht";
    if (state_v_first) s += " v_first";
    if (intermediate_states) s += " h";
    return s + " chunk" + std::to_string(chunk_size);
  }
};

struct Inputs {
  Case c;
  HostTensor q, k, v, g, beta, A_log, dt_bias, h0, cu;
};

Inputs make_inputs(const Case& c, uint64_t seed, DType dtype = DType::f64) {
  Inputs in{c};
  in.q = testing::randn({c.B, c.T, c.H, c.K}, seed, 0.6, dtype);
  in.k = testing::randn({c.B, c.T, c.H, c.K}, seed + 1, 0.6, dtype);
  in.v = testing::randn({c.B, c.T, c.HV, c.V}, seed + 2, 1.0, dtype);
  if (c.gate == GateMode::none) {
    in.g = testing::uniform({c.B, c.T, c.HV, c.K}, seed + 3, -0.7, -0.02, dtype);  // log decay
  } else {
    in.g = testing::randn({c.B, c.T, c.HV, c.K}, seed + 3, 1.0, dtype);  // raw gate input
  }
  if (c.beta == BetaMode::plain) {
    in.beta = testing::uniform({c.B, c.T, c.HV}, seed + 4, 0.1, 0.9, dtype);
  } else {
    in.beta = testing::randn({c.B, c.T, c.HV}, seed + 4, 1.0, dtype);  // logits
  }
  if (c.has_A_log()) in.A_log = testing::uniform({c.HV}, seed + 5, -1.5, 0.3);
  if (c.has_dt_bias()) in.dt_bias = testing::randn({c.HV * c.K}, seed + 6, 0.5);
  if (c.initial_state) in.h0 = testing::randn(c.state_sizes(), seed + 7, 0.5);
  if (!c.cu_seqlens.empty()) in.cu = testing::int_tensor(c.cu_seqlens, DType::i32);
  return in;
}

struct Outputs {
  HostTensor o, ht, h;  // h: the intermediate states (FLA's h), c.intermediate_sizes()
};

enum class Form { chunk, recurrent };

// chunk_kda_fwd (without intermediate states) or kda_recurrent_fwd.
void forward(Form form, const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& g,
             const TensorView& beta, const TensorView* A_log, const TensorView* dt_bias,
             const TensorView* initial_state, const TensorView* cu_seqlens, const KdaParams& params,
             const TensorView& o, const TensorView* final_state) {
  if (form == Form::chunk)
    chunk_kda_fwd(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, params, o, final_state);
  else
    kda_recurrent_fwd(q, k, v, g, beta, A_log, dt_bias, initial_state, cu_seqlens, params, o, final_state);
}

Outputs run_fwd(Form form, const Inputs& in) {
  const Case& c = in.c;
  Outputs out{HostTensor(in.v.dtype(), {c.B, c.T, c.HV, c.V}), HostTensor()};
  if (c.final_state) out.ht = HostTensor(DType::f64, c.state_sizes());
  const bool with_h = c.intermediate_states && form == Form::chunk;
  if (with_h) out.h = HostTensor(DType::f64, c.intermediate_sizes());
  const TensorView A = in.A_log.view(), bias = in.dt_bias.view(), h0 = in.h0.view(), cu = in.cu.view(),
                   ht = out.ht.view(), h = out.h.view();
  const TensorView* A_p = c.has_A_log() ? &A : nullptr;
  const TensorView* bias_p = c.has_dt_bias() ? &bias : nullptr;
  const TensorView* h0_p = c.initial_state ? &h0 : nullptr;
  const TensorView* cu_p = c.cu_seqlens.empty() ? nullptr : &cu;
  if (form == Form::chunk) {
    chunk_kda_fwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), A_p, bias_p, h0_p, cu_p,
                  c.params(), out.o.view(), c.final_state ? &ht : nullptr, with_h ? &h : nullptr);
  } else {
    kda_recurrent_fwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), A_p, bias_p, h0_p, cu_p,
                      c.params(), out.o.view(), c.final_state ? &ht : nullptr);
  }
  return out;
}

struct Grads {
  HostTensor dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias;
};

Grads run_bwd(const Inputs& in, const HostTensor& d_o, const HostTensor* dht) {
  const Case& c = in.c;
  Grads gr{HostTensor(in.q.dtype(), in.q.sizes()), HostTensor(in.k.dtype(), in.k.sizes()),
           HostTensor(in.v.dtype(), in.v.sizes()),  HostTensor(in.g.dtype(), in.g.sizes()),
           HostTensor(in.beta.dtype(), in.beta.sizes()), HostTensor(), HostTensor(), HostTensor()};
  if (c.initial_state) gr.dh0 = HostTensor(DType::f64, c.state_sizes());
  if (c.has_A_log()) gr.dA_log = HostTensor(DType::f64, {c.HV});
  if (c.has_dt_bias()) gr.ddt_bias = HostTensor(DType::f64, {c.HV * c.K});
  const TensorView A = in.A_log.view(), bias = in.dt_bias.view(), h0 = in.h0.view(), cu = in.cu.view();
  const TensorView dh0 = gr.dh0.view(), dA = gr.dA_log.view(), dbias = gr.ddt_bias.view();
  TensorView dht_view;
  if (dht) dht_view = dht->view();
  chunk_kda_bwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), c.has_A_log() ? &A : nullptr,
                c.has_dt_bias() ? &bias : nullptr, c.initial_state ? &h0 : nullptr,
                c.cu_seqlens.empty() ? nullptr : &cu, c.params(), d_o.view(), dht ? &dht_view : nullptr,
                gr.dq.view(), gr.dk.view(), gr.dv.view(), gr.dg.view(), gr.dbeta.view(),
                c.initial_state ? &dh0 : nullptr, c.has_A_log() ? &dA : nullptr, c.has_dt_bias() ? &dbias : nullptr);
  return gr;
}

// The definition, token by token, written independently of src/cpu/kda: returns o [B, T, HV, V],
// the final states in the layout of c.state_sizes(), and the state before each chunk_size-th token of a
// sequence (FLA's h) in the layout of c.intermediate_sizes().
Outputs brute_force(const Inputs& in) {
  const Case& c = in.c;
  const int64_t G = c.HV / c.H;
  const double scale = c.scale ? *c.scale : 1.0 / std::sqrt(double(c.K));
  std::vector<int64_t> offsets = c.cu_seqlens;
  if (offsets.empty())
    for (int64_t b = 0; b <= c.B; ++b) offsets.push_back(b * c.T);
  auto vec = [](const HostTensor& t, int64_t i) { return t.get(i); };
  auto norm_row = [&](const HostTensor& x, int64_t t, int64_t h) {
    std::vector<double> r(c.K);
    double ss = 0.0;
    for (int64_t d = 0; d < c.K; ++d) ss += std::pow(vec(x, (t * c.H + h) * c.K + d), 2);
    for (int64_t d = 0; d < c.K; ++d)
      r[d] = vec(x, (t * c.H + h) * c.K + d) * (c.l2norm ? 1.0 / std::sqrt(ss + 1e-6) : 1.0);
    return r;
  };
  Outputs out{HostTensor(DType::f64, {c.B, c.T, c.HV, c.V}), HostTensor(DType::f64, c.state_sizes()),
              HostTensor(DType::f64, c.intermediate_sizes())};
  auto state_index = [&](int64_t n, int64_t hv, int64_t d, int64_t e) {
    return c.state_v_first ? ((n * c.HV + hv) * c.V + e) * c.K + d : ((n * c.HV + hv) * c.K + d) * c.V + e;
  };
  int64_t first_chunk = 0;  // row of the sequence's first chunk in h
  for (int64_t n = 0; n + 1 < static_cast<int64_t>(offsets.size()); ++n) {
    for (int64_t hv = 0; hv < c.HV; ++hv) {
      std::vector<std::vector<double>> S(c.K, std::vector<double>(c.V, 0.0));
      if (c.initial_state)
        for (int64_t d = 0; d < c.K; ++d)
          for (int64_t e = 0; e < c.V; ++e) S[d][e] = in.h0.get(state_index(n, hv, d, e));
      for (int64_t t = offsets[n]; t < offsets[n + 1]; ++t) {
        if ((t - offsets[n]) % c.chunk_size == 0)
          for (int64_t d = 0; d < c.K; ++d)
            for (int64_t e = 0; e < c.V; ++e)
              out.h.set(state_index(first_chunk + (t - offsets[n]) / c.chunk_size, hv, d, e), S[d][e]);
        const std::vector<double> q = norm_row(in.q, t, hv / G), k = norm_row(in.k, t, hv / G);
        double beta = in.beta.get(t * c.HV + hv);
        if (c.beta != BetaMode::plain) beta = (c.beta == BetaMode::neg_eigval ? 2.0 : 1.0) / (1.0 + std::exp(-beta));
        for (int64_t d = 0; d < c.K; ++d) {
          double g = in.g.get((t * c.HV + hv) * c.K + d);
          if (c.gate != GateMode::none) {
            const double x = g + (c.has_dt_bias() ? in.dt_bias.get(hv * c.K + d) : 0.0);
            const double a = c.has_A_log() ? std::exp(in.A_log.get(hv)) : 1.0;
            g = c.lower_bound() ? -3.0 / (1.0 + std::exp(-a * x)) : -a * (x > 20 ? x : std::log(1.0 + std::exp(x)));
          }
          for (int64_t e = 0; e < c.V; ++e) S[d][e] *= std::exp(g);
        }
        for (int64_t e = 0; e < c.V; ++e) {
          double pred = 0.0;
          for (int64_t d = 0; d < c.K; ++d) pred += k[d] * S[d][e];
          const double delta = beta * (in.v.get((t * c.HV + hv) * c.V + e) - pred);
          double o = 0.0;
          for (int64_t d = 0; d < c.K; ++d) {
            S[d][e] += k[d] * delta;
            o += scale * q[d] * S[d][e];
          }
          out.o.set((t * c.HV + hv) * c.V + e, o);
        }
      }
      for (int64_t d = 0; d < c.K; ++d)
        for (int64_t e = 0; e < c.V; ++e) out.ht.set(state_index(n, hv, d, e), S[d][e]);
    }
    first_chunk += (offsets[n + 1] - offsets[n] + c.chunk_size - 1) / c.chunk_size;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Forward: chunk == recurrent == brute force

TEST(KdaForward, ChunkAndRecurrentMatchBruteForceOverShapes) {
  // fp64 end to end: both forms agree with the definition to rounding.
  constexpr double kTol = 1e-11;
  uint64_t seed = 100;
  for (int64_t T : {1, 5, 63, 64, 65, 130}) {
    for (auto [K, V] : {std::pair<int64_t, int64_t>{16, 16}, {16, 32}, {32, 16}, {32, 32}}) {
      Case c;
      c.B = 2;
      c.T = T;
      c.H = 1;
      c.HV = 2;
      c.K = K;
      c.V = V;
      c.initial_state = T % 2 == 1;
      c.final_state = true;
      c.l2norm = K == 32;
      const Inputs in = make_inputs(c, seed += 10);
      const Outputs ref = brute_force(in);
      for (Form form : {Form::chunk, Form::recurrent}) {
        const Outputs got = run_fwd(form, in);
        const double scale = std::max(1.0, testing::max_abs_diff(ref.o, HostTensor::zeros(DType::f64, ref.o.sizes())));
        EXPECT_LE(testing::max_abs_diff(got.o, ref.o), kTol * scale) << c.name() << " form " << int(form);
        EXPECT_LE(testing::max_abs_diff(got.ht, ref.ht), kTol * scale) << c.name() << " form " << int(form);
      }
    }
  }
}

TEST(KdaForward, EveryOptionMatchesBruteForce) {
  constexpr double kTol = 1e-11;
  uint64_t seed = 500;
  int index = 0;
  for (bool l2norm : {false, true})
    for (GateMode gate : {GateMode::none, GateMode::softplus, GateMode::softplus_no_bias, GateMode::lower_bound,
                          GateMode::lower_bound_no_A, GateMode::lower_bound_no_A_no_bias})
      for (BetaMode beta : {BetaMode::plain, BetaMode::sigmoid, BetaMode::neg_eigval}) {
        ++index;
        Case c;
        c.B = 2;
        c.T = 37;
        c.H = 2;
        c.HV = index % 2 ? 2 : 4;
        c.K = 8;
        c.V = 6;
        c.l2norm = l2norm;
        c.gate = gate;
        c.beta = beta;
        c.initial_state = index % 3 != 0;
        c.final_state = index % 4 != 0;
        c.state_v_first = index % 5 == 1;
        c.chunk_size = index % 2 ? 32 : 64;
        if (index % 7 == 0) c.scale = 0.37;
        const Inputs in = make_inputs(c, seed += 10);
        const Outputs ref = brute_force(in);
        for (Form form : {Form::chunk, Form::recurrent}) {
          const Outputs got = run_fwd(form, in);
          EXPECT_LE(testing::max_abs_diff(got.o, ref.o), kTol) << c.name();
          if (c.final_state) EXPECT_LE(testing::max_abs_diff(got.ht, ref.ht), kTol) << c.name();
        }
      }
}

TEST(KdaForward, LowPrecisionInputsRoundOutputs) {
  // bf16/f16/f32 inputs are widened exactly, computed in double and rounded once on store:
  // the output equals the f64 result on the same (rounded) inputs, rounded to the dtype.
  for (DType dtype : {DType::bf16, DType::f16, DType::f32}) {
    Case c;
    c.T = 70;
    c.H = 1;
    c.HV = 2;
    c.K = 16;
    c.V = 16;
    c.gate = GateMode::softplus;
    c.l2norm = true;
    const Inputs low = make_inputs(c, 77, dtype);
    Inputs wide = low;
    for (HostTensor* t : {&wide.q, &wide.k, &wide.v, &wide.g, &wide.beta}) *t = t->to(DType::f64);
    const Outputs got = run_fwd(Form::chunk, low);
    ASSERT_EQ(got.o.dtype(), dtype);
    const HostTensor ref = run_fwd(Form::chunk, wide).o.to(dtype);
    EXPECT_EQ(testing::max_abs_diff(got.o, ref), 0.0) << dtype_name(dtype);
  }
}

TEST(KdaForward, Float32StatesRoundOnStore) {
  // initial_state / final_state / dht / dh0 in f32: loaded exactly, rounded once on store.
  Case c;
  c.T = 19;
  c.HV = 2;
  c.H = 2;
  c.initial_state = true;
  c.final_state = true;
  Inputs in = make_inputs(c, 404);
  in.h0 = in.h0.to(DType::f32);
  Inputs wide = in;
  wide.h0 = in.h0.to(DType::f64);
  const Outputs ref = run_fwd(Form::chunk, wide);
  HostTensor o(DType::f64, {c.B, c.T, c.HV, c.V}), ht(DType::f32, c.state_sizes());
  const TensorView h0 = in.h0.view(), ht_v = ht.view();
  chunk_kda_fwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), nullptr, nullptr, &h0, nullptr,
                c.params(), o.view(), &ht_v);
  EXPECT_EQ(testing::max_abs_diff(o, ref.o), 0.0);
  EXPECT_EQ(testing::max_abs_diff(ht, ref.ht.to(DType::f32)), 0.0);
  const HostTensor d_o = testing::randn({c.B, c.T, c.HV, c.V}, 405);
  const HostTensor dht = testing::randn(c.state_sizes(), 406, 1.0, DType::f32);
  const HostTensor dht_wide = dht.to(DType::f64);
  const Grads g_ref = run_bwd(wide, d_o, &dht_wide);
  HostTensor dq(DType::f64, in.q.sizes()), dk(DType::f64, in.k.sizes()), dv(DType::f64, in.v.sizes()),
      dg(DType::f64, in.g.sizes()), db(DType::f64, in.beta.sizes()), dh0(DType::f32, c.state_sizes());
  const TensorView dht_v = dht.view(), dh0_v = dh0.view();
  chunk_kda_bwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), nullptr, nullptr, &h0, nullptr,
                c.params(), d_o.view(), &dht_v, dq.view(), dk.view(), dv.view(), dg.view(), db.view(), &dh0_v, nullptr,
                nullptr);
  EXPECT_EQ(testing::max_abs_diff(dq, g_ref.dq), 0.0);
  EXPECT_EQ(testing::max_abs_diff(dh0, g_ref.dh0.to(DType::f32)), 0.0);
}

TEST(KdaForward, StridedInputsMatchContiguous) {
  Case c;
  c.T = 9;
  c.H = 2;
  c.HV = 2;
  const Inputs in = make_inputs(c, 901);
  // q stored as [B, H, T, K] and viewed as [B, T, H, K]
  HostTensor q_bhtk(DType::f64, {c.B, c.H, c.T, c.K});
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t d = 0; d < c.K; ++d) q_bhtk.set((h * c.T + t) * c.K + d, in.q.get((t * c.H + h) * c.K + d));
  TensorView qv = q_bhtk.view();
  qv.sizes = {c.B, c.T, c.H, c.K};
  qv.strides = {c.H * c.T * c.K, c.K, c.T * c.K, 1};
  HostTensor o(DType::f64, {c.B, c.T, c.HV, c.V});
  chunk_kda_fwd(qv, in.k.view(), in.v.view(), in.g.view(), in.beta.view(), nullptr, nullptr, nullptr, nullptr,
                c.params(), o.view(), nullptr);
  EXPECT_LE(testing::max_abs_diff(o, run_fwd(Form::chunk, in).o), 1e-14);
}

// ---------------------------------------------------------------------------------------------
// Intermediate states (FLA's h with return_intermediate_states): the state entering each chunk.

TEST(KdaIntermediateStates, EqualTheRecurrenceStateAtEveryChunkStart) {
  // fp64: the chunked form's S before each chunk equals the token recurrence's S before token
  // chunk_size * c of the sequence; fixed length (T below, at and above chunk multiples) and varlen
  // with empty and length-1 sequences, both chunk sizes, both state layouts, with and without h0, the
  // in-kernel transforms on some. Adding the output leaves o and the final state bit-identical.
  constexpr double kTol = 1e-11;
  uint64_t seed = 7000;
  int index = 0;
  std::vector<Case> shapes;
  for (int64_t T : {1, 31, 32, 33, 64, 65, 130}) {
    Case c;
    c.B = 2;
    c.T = T;
    c.H = 1;
    c.HV = 2;
    c.K = 6;
    c.V = 5;
    shapes.push_back(c);
  }
  {
    Case c;
    c.cu_seqlens = {0, 0, 1, 40, 40, 107, 108, 172};
    c.T = 172;
    c.H = 2;
    c.HV = 4;
    c.K = 5;
    c.V = 4;
    shapes.push_back(c);
  }
  for (const Case& shape : shapes)
    for (int64_t chunk_size : {32, 64})
      for (bool v_first : {false, true})
        for (bool h0 : {false, true}) {
          ++index;
          Case c = shape;
          c.chunk_size = chunk_size;
          c.state_v_first = v_first;
          c.initial_state = h0;
          c.final_state = index % 2 == 0;
          c.intermediate_states = true;
          if (index % 3 == 0) {
            c.l2norm = true;
            c.gate = GateMode::softplus;
            c.beta = BetaMode::sigmoid;
          }
          const Inputs in = make_inputs(c, seed += 10);
          const Outputs ref = brute_force(in);
          const Outputs got = run_fwd(Form::chunk, in);
          ASSERT_EQ(got.h.sizes(), c.intermediate_sizes()) << c.name();
          EXPECT_LE(testing::max_abs_diff(got.h, ref.h), kTol) << c.name();
          Case without = c;
          without.intermediate_states = false;
          Inputs in_without = in;
          in_without.c = without;
          const Outputs plain = run_fwd(Form::chunk, in_without);
          EXPECT_EQ(testing::max_abs_diff(got.o, plain.o), 0.0) << c.name();
          if (c.final_state) EXPECT_EQ(testing::max_abs_diff(got.ht, plain.ht), 0.0) << c.name();
        }
}

TEST(KdaIntermediateStates, SequenceFirstChunkIsItsInitialStateAndFloat32RoundsOnStore) {
  Case c;
  c.cu_seqlens = {0, 3, 3, 70};
  c.T = 70;
  c.HV = 2;
  c.H = 1;
  c.initial_state = true;
  c.intermediate_states = true;
  const Inputs in = make_inputs(c, 321);
  const Outputs got = run_fwd(Form::chunk, in);
  // chunks: sequence 0 -> row 0, sequence 1 (empty) -> none, sequence 2 (67 tokens) -> rows 1, 2
  ASSERT_EQ(got.h.sizes(), (std::vector<int64_t>{1, 3, c.HV, c.K, c.V}));
  const int64_t per = c.HV * c.K * c.V;
  for (int64_t i = 0; i < per; ++i) {
    EXPECT_EQ(got.h.get(i), in.h0.get(i));
    EXPECT_EQ(got.h.get(per + i), in.h0.get(2 * per + i));
  }
  HostTensor o(DType::f64, {1, c.T, c.HV, c.V}), h32(DType::f32, c.intermediate_sizes());
  const TensorView h0 = in.h0.view(), cu = in.cu.view(), h32_v = h32.view();
  chunk_kda_fwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), nullptr, nullptr, &h0, &cu,
                c.params(), o.view(), nullptr, &h32_v);
  EXPECT_EQ(testing::max_abs_diff(h32, got.h.to(DType::f32)), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Varlen == per-sequence loop (forward and backward), empty and length-1 sequences included.

Inputs slice_sequence(const Inputs& in, int64_t n) {
  const int64_t bos = in.c.cu_seqlens[n], len = in.c.cu_seqlens[n + 1] - bos;
  Case c = in.c;
  c.cu_seqlens.clear();
  c.B = 1;
  c.T = len;
  Inputs out{c};
  auto rows = [&](const HostTensor& t, int64_t row) {
    HostTensor r(t.dtype(), [&] { auto s = t.sizes(); s[1] = len; return s; }());
    for (int64_t i = 0; i < r.numel(); ++i) r.set(i, t.get(bos * row + i));
    return r;
  };
  out.q = rows(in.q, c.H * c.K);
  out.k = rows(in.k, c.H * c.K);
  out.v = rows(in.v, c.HV * c.V);
  out.g = rows(in.g, c.HV * c.K);
  out.beta = rows(in.beta, c.HV);
  out.A_log = in.A_log;
  out.dt_bias = in.dt_bias;
  if (c.initial_state) {
    const int64_t per = c.HV * c.K * c.V;
    out.h0 = HostTensor(DType::f64, c.state_sizes());
    for (int64_t i = 0; i < per; ++i) out.h0.set(i, in.h0.get(n * per + i));
  }
  return out;
}

TEST(KdaVarlen, EqualsPerSequenceLoop) {
  Case c;
  c.cu_seqlens = {0, 0, 1, 40, 40, 107, 108};
  c.T = 108;
  c.H = 2;
  c.HV = 4;
  c.K = 8;
  c.V = 4;
  c.initial_state = true;
  c.final_state = true;
  c.gate = GateMode::softplus;
  c.l2norm = true;
  c.beta = BetaMode::sigmoid;
  const Inputs in = make_inputs(c, 1234);
  const HostTensor d_o = testing::randn({1, c.T, c.HV, c.V}, 55);
  const HostTensor dht = testing::randn(c.state_sizes(), 56);
  const Grads grads = run_bwd(in, d_o, &dht);
  const int64_t per_state = c.HV * c.K * c.V;
  std::vector<double> dA_sum(c.HV, 0.0), dbias_sum(c.HV * c.K, 0.0);
  for (Form form : {Form::chunk, Form::recurrent}) {
    const Outputs all = run_fwd(form, in);
    for (int64_t n = 0; n + 1 < static_cast<int64_t>(c.cu_seqlens.size()); ++n) {
      const Inputs one = slice_sequence(in, n);
      const Outputs got = run_fwd(form, one);
      const int64_t bos = c.cu_seqlens[n];
      for (int64_t i = 0; i < got.o.numel(); ++i)
        EXPECT_EQ(got.o.get(i), all.o.get(bos * c.HV * c.V + i)) << "seq " << n;
      for (int64_t i = 0; i < per_state; ++i) EXPECT_EQ(got.ht.get(i), all.ht.get(n * per_state + i)) << "seq " << n;
      if (form == Form::recurrent) continue;
      // backward of the single sequence
      HostTensor d_o1(DType::f64, got.o.sizes()), dht1(DType::f64, one.c.state_sizes());
      for (int64_t i = 0; i < d_o1.numel(); ++i) d_o1.set(i, d_o.get(bos * c.HV * c.V + i));
      for (int64_t i = 0; i < per_state; ++i) dht1.set(i, dht.get(n * per_state + i));
      const Grads g1 = run_bwd(one, d_o1, &dht1);
      auto same_rows = [&](const HostTensor& part, const HostTensor& whole, int64_t row, const char* what) {
        for (int64_t i = 0; i < part.numel(); ++i)
          EXPECT_NEAR(part.get(i), whole.get(bos * row + i), 1e-13) << what << " seq " << n;
      };
      same_rows(g1.dq, grads.dq, c.H * c.K, "dq");
      same_rows(g1.dk, grads.dk, c.H * c.K, "dk");
      same_rows(g1.dv, grads.dv, c.HV * c.V, "dv");
      same_rows(g1.dg, grads.dg, c.HV * c.K, "dg");
      same_rows(g1.dbeta, grads.dbeta, c.HV, "dbeta");
      for (int64_t i = 0; i < per_state; ++i) EXPECT_NEAR(g1.dh0.get(i), grads.dh0.get(n * per_state + i), 1e-13);
      for (int64_t i = 0; i < c.HV; ++i) dA_sum[i] += g1.dA_log.get(i);
      for (int64_t i = 0; i < c.HV * c.K; ++i) dbias_sum[i] += g1.ddt_bias.get(i);
    }
  }
  // parameter gradients are sums over sequences
  for (int64_t i = 0; i < c.HV; ++i) EXPECT_NEAR(dA_sum[i], grads.dA_log.get(i), 1e-12);
  for (int64_t i = 0; i < c.HV * c.K; ++i) EXPECT_NEAR(dbias_sum[i], grads.ddt_bias.get(i), 1e-12);
  // an empty sequence passes its initial state through, and dh0 = dht
  const Outputs all = run_fwd(Form::chunk, in);
  for (int64_t i = 0; i < per_state; ++i) {
    EXPECT_EQ(all.ht.get(i), in.h0.get(i));
    EXPECT_EQ(grads.dh0.get(i), dht.get(i));
  }
}

// ---------------------------------------------------------------------------------------------
// GVA: HV = G * H equals H' = HV heads with q/k repeated per group; dq/dk sum over the group.

TEST(KdaGva, EqualsRepeatedQkHeads) {
  Case c;
  c.T = 41;
  c.H = 2;
  c.HV = 6;
  c.initial_state = true;
  c.final_state = true;
  c.l2norm = true;
  const Inputs in = make_inputs(c, 4321);
  Case ce = c;
  ce.H = c.HV;
  Inputs ex = in;
  ex.c = ce;
  ex.q = HostTensor(DType::f64, {1, c.T, c.HV, c.K});
  ex.k = HostTensor(DType::f64, {1, c.T, c.HV, c.K});
  const int64_t G = c.HV / c.H;
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t hv = 0; hv < c.HV; ++hv)
      for (int64_t d = 0; d < c.K; ++d) {
        ex.q.set((t * c.HV + hv) * c.K + d, in.q.get((t * c.H + hv / G) * c.K + d));
        ex.k.set((t * c.HV + hv) * c.K + d, in.k.get((t * c.H + hv / G) * c.K + d));
      }
  const Outputs a = run_fwd(Form::chunk, in), b = run_fwd(Form::chunk, ex);
  EXPECT_LE(testing::max_abs_diff(a.o, b.o), 1e-13);
  EXPECT_LE(testing::max_abs_diff(a.ht, b.ht), 1e-13);
  const HostTensor d_o = testing::randn({1, c.T, c.HV, c.V}, 9);
  const HostTensor dht = testing::randn(c.state_sizes(), 10);
  const Grads ga = run_bwd(in, d_o, &dht), gb = run_bwd(ex, d_o, &dht);
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t d = 0; d < c.K; ++d) {
        double sq = 0.0, sk = 0.0;
        for (int64_t j = 0; j < G; ++j) {
          sq += gb.dq.get((t * c.HV + h * G + j) * c.K + d);
          sk += gb.dk.get((t * c.HV + h * G + j) * c.K + d);
        }
        // the L2 norm backward is linear in dy and the group shares x, so the sums commute with it
        EXPECT_NEAR(ga.dq.get((t * c.H + h) * c.K + d), sq, 1e-12);
        EXPECT_NEAR(ga.dk.get((t * c.H + h) * c.K + d), sk, 1e-12);
      }
  EXPECT_LE(testing::max_abs_diff(ga.dv, gb.dv), 1e-12);
  EXPECT_LE(testing::max_abs_diff(ga.dg, gb.dg), 1e-12);
  EXPECT_LE(testing::max_abs_diff(ga.dbeta, gb.dbeta), 1e-12);
  EXPECT_LE(testing::max_abs_diff(ga.dh0, gb.dh0), 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Backward vs fp64 central differences, every option combination, every input.

void check_gradients(const Case& c, uint64_t seed) {
  Inputs in = make_inputs(c, seed);
  const HostTensor w_o = testing::randn({c.B, c.T, c.HV, c.V}, seed + 100);
  const HostTensor w_ht = testing::randn(c.state_sizes(), seed + 101);
  auto loss = [&] {
    const Outputs out = run_fwd(Form::chunk, in);
    return testing::weighted_sum(out.o, w_o) + (c.final_state ? testing::weighted_sum(out.ht, w_ht) : 0.0);
  };
  const Grads gr = run_bwd(in, w_o, c.final_state ? &w_ht : nullptr);
  const std::string n = c.name();
  constexpr double kAtol = 1e-7, kRtol = 1e-6;
  constexpr int kChecks = 24;
  testing::expect_gradient_matches(in.q, gr.dq, loss, n + " dq", kAtol, kRtol, kChecks);
  testing::expect_gradient_matches(in.k, gr.dk, loss, n + " dk", kAtol, kRtol, kChecks);
  testing::expect_gradient_matches(in.v, gr.dv, loss, n + " dv", kAtol, kRtol, kChecks);
  testing::expect_gradient_matches(in.g, gr.dg, loss, n + " dg", kAtol, kRtol, kChecks);
  testing::expect_gradient_matches(in.beta, gr.dbeta, loss, n + " dbeta", kAtol, kRtol, kChecks);
  if (c.initial_state) testing::expect_gradient_matches(in.h0, gr.dh0, loss, n + " dh0", kAtol, kRtol, kChecks);
  if (c.has_A_log()) testing::expect_gradient_matches(in.A_log, gr.dA_log, loss, n + " dA_log", kAtol, kRtol);
  if (c.has_dt_bias())
    testing::expect_gradient_matches(in.dt_bias, gr.ddt_bias, loss, n + " ddt_bias", kAtol, kRtol, kChecks);
}

TEST(KdaBackward, MatchesFiniteDifferencesInEveryOptionCombination) {
  int index = 0;
  for (bool l2norm : {false, true})
    for (GateMode gate : {GateMode::none, GateMode::softplus, GateMode::softplus_no_bias, GateMode::lower_bound,
                          GateMode::lower_bound_no_A, GateMode::lower_bound_no_A_no_bias})
      for (BetaMode beta : {BetaMode::plain, BetaMode::sigmoid, BetaMode::neg_eigval}) {
        ++index;
        Case c;
        c.H = 1 + index % 2;
        c.HV = c.H * (index % 3 == 0 ? 2 : 1);
        c.K = 3;
        c.V = 2;
        c.l2norm = l2norm;
        c.gate = gate;
        c.beta = beta;
        c.initial_state = index % 2 == 0;
        c.final_state = index % 3 != 1;
        c.state_v_first = index % 5 == 2;
        c.chunk_size = 32;
        if (index % 4 == 0) {
          c.cu_seqlens = {0, 3, 3, 4, 37};
          c.T = 37;
        } else {
          c.B = 2;
          c.T = index % 4 == 1 ? 5 : 34;  // one partial chunk, or two with a checkpoint
        }
        if (index % 6 == 5) c.scale = 0.8;
        check_gradients(c, 2000 + index * 17);
      }
}

TEST(KdaBackward, AbsentDhtEqualsZeroDht) {
  // output_final_state without dht: the final state contributes nothing.
  Case c;
  c.T = 20;
  c.final_state = true;
  c.initial_state = true;
  const Inputs in = make_inputs(c, 31);
  const HostTensor d_o = testing::randn({1, c.T, c.HV, c.V}, 32);
  const HostTensor zero = HostTensor::zeros(DType::f64, c.state_sizes());
  const Grads a = run_bwd(in, d_o, nullptr), b = run_bwd(in, d_o, &zero);
  EXPECT_EQ(testing::max_abs_diff(a.dq, b.dq), 0.0);
  EXPECT_EQ(testing::max_abs_diff(a.dh0, b.dh0), 0.0);
}

TEST(KdaBackward, CheckpointIntervalDoesNotChangeGradients) {
  // chunk_size only sets where the state is checkpointed: 32 and 64 recompute the same states.
  Case c;
  c.T = 150;
  c.H = 1;
  c.HV = 2;
  c.initial_state = true;
  c.final_state = true;
  c.gate = GateMode::softplus;
  Inputs in32 = make_inputs(c, 61);
  in32.c.chunk_size = 32;
  const HostTensor d_o = testing::randn({1, c.T, c.HV, c.V}, 62);
  const HostTensor dht = testing::randn(c.state_sizes(), 63);
  const Grads a = run_bwd(in32, d_o, &dht), b = run_bwd(make_inputs(c, 61), d_o, &dht);
  EXPECT_EQ(testing::max_abs_diff(a.dq, b.dq), 0.0);
  EXPECT_EQ(testing::max_abs_diff(a.dk, b.dk), 0.0);
  EXPECT_EQ(testing::max_abs_diff(a.dg, b.dg), 0.0);
  EXPECT_EQ(testing::max_abs_diff(a.dh0, b.dh0), 0.0);
  EXPECT_EQ(testing::max_abs_diff(a.dA_log, b.dA_log), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Golden parity with FLA's naive_recurrent_kda / naive_chunk_kda (+ naive gates, torch autograd).

const HostTensor* optional_tensor(const testing::GoldenCase& gc, const std::string& name) {
  const auto it = gc.find(name);
  return it == gc.end() ? nullptr : &it->second;
}

TEST(KdaGolden, MatchesFlaNaiveReferences) {
  const std::vector<std::string> files = testing::list_golden("kda");
  ASSERT_FALSE(files.empty()) << "no golden files under tests/golden/kda (run tests/golden/gen_kda.py)";
  for (const std::string& file : files) {
    const testing::GoldenCase gc = testing::load_golden(file);
    auto opt = [&](const char* name) { return testing::golden_tensor(gc, name).get(0); };
    const HostTensor& q = testing::golden_tensor(gc, "q");
    const HostTensor& v = testing::golden_tensor(gc, "v");
    KdaParams p;
    p.scale = opt("scale");
    p.output_final_state = opt("output_final_state") != 0;
    p.use_qk_l2norm_in_kernel = opt("use_qk_l2norm_in_kernel") != 0;
    p.use_gate_in_kernel = opt("use_gate_in_kernel") != 0;
    if (!std::isnan(opt("lower_bound"))) p.lower_bound = opt("lower_bound");
    p.use_beta_sigmoid_in_kernel = opt("use_beta_sigmoid_in_kernel") != 0;
    p.allow_neg_eigval = opt("allow_neg_eigval") != 0;
    const HostTensor* A_log = optional_tensor(gc, "A_log");
    const HostTensor* dt_bias = optional_tensor(gc, "dt_bias");
    const HostTensor* h0 = optional_tensor(gc, "initial_state");
    const HostTensor* cu = optional_tensor(gc, "cu_seqlens");
    const TensorView A_v = A_log ? A_log->view() : TensorView(), bias_v = dt_bias ? dt_bias->view() : TensorView(),
                     h0_v = h0 ? h0->view() : TensorView(), cu_v = cu ? cu->view() : TensorView();
    const int64_t HV = v.size(2), K = q.size(3), V = v.size(3);
    const int64_t N = cu ? cu->numel() - 1 : q.size(0);
    const HostTensor& o_ref = testing::golden_tensor(gc, "o");
    const double o_scale = std::max(1.0, testing::max_abs_diff(o_ref, HostTensor::zeros(DType::f64, o_ref.sizes())));
    for (Form form : {Form::chunk, Form::recurrent}) {
      HostTensor o(DType::f64, v.sizes()), ht(DType::f64, {N, HV, K, V});
      const TensorView ht_v = ht.view();
      forward(form, q.view(), testing::golden_tensor(gc, "k").view(), v.view(), testing::golden_tensor(gc, "g").view(),
              testing::golden_tensor(gc, "beta").view(), A_log ? &A_v : nullptr, dt_bias ? &bias_v : nullptr,
              h0 ? &h0_v : nullptr, cu ? &cu_v : nullptr, p, o.view(), p.output_final_state ? &ht_v : nullptr);
      EXPECT_LE(testing::max_abs_diff(o, o_ref), 1e-9 * o_scale) << file << " o form " << int(form);
      if (p.output_final_state)
        EXPECT_LE(testing::max_abs_diff(ht, testing::golden_tensor(gc, "final_state")), 1e-9 * o_scale) << file;
    }
    // gradients
    const HostTensor& d_o = testing::golden_tensor(gc, "do");
    const HostTensor* dht = optional_tensor(gc, "dht");
    const TensorView dht_v = dht ? dht->view() : TensorView();
    auto like = [](const HostTensor& t) { return HostTensor(DType::f64, t.sizes()); };
    HostTensor dq = like(q), dk = like(q), dv = like(v), dg = like(testing::golden_tensor(gc, "g")),
               dbeta = like(testing::golden_tensor(gc, "beta"));
    HostTensor dh0 = h0 ? like(*h0) : HostTensor(), dA = A_log ? like(*A_log) : HostTensor(),
               dbias = dt_bias ? like(*dt_bias) : HostTensor();
    const TensorView dh0_v = dh0.view(), dA_v = dA.view(), dbias_v = dbias.view();
    chunk_kda_bwd(q.view(), testing::golden_tensor(gc, "k").view(), v.view(), testing::golden_tensor(gc, "g").view(),
                  testing::golden_tensor(gc, "beta").view(), A_log ? &A_v : nullptr, dt_bias ? &bias_v : nullptr,
                  h0 ? &h0_v : nullptr, cu ? &cu_v : nullptr, p, d_o.view(), dht ? &dht_v : nullptr, dq.view(),
                  dk.view(), dv.view(), dg.view(), dbeta.view(), h0 ? &dh0_v : nullptr, A_log ? &dA_v : nullptr,
                  dt_bias ? &dbias_v : nullptr);
    auto expect_grad = [&](const HostTensor& got, const char* name) {
      const HostTensor& ref = testing::golden_tensor(gc, name);
      const double s = std::max(1.0, testing::max_abs_diff(ref, HostTensor::zeros(DType::f64, ref.sizes())));
      EXPECT_LE(testing::max_abs_diff(got, ref), 1e-9 * s) << file << " " << name;
    };
    expect_grad(dq, "dq");
    expect_grad(dk, "dk");
    expect_grad(dv, "dv");
    expect_grad(dg, "dg");
    expect_grad(dbeta, "dbeta");
    if (h0) expect_grad(dh0, "dh0");
    if (A_log) expect_grad(dA, "dA_log");
    if (dt_bias) expect_grad(dbias, "ddt_bias");
  }
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: every entry names the offending argument.

TEST(KdaBadInput, EveryEntryNamesTheArgument) {
  Case c;
  c.T = 6;
  c.H = 2;
  c.HV = 4;
  c.initial_state = true;
  c.final_state = true;
  c.gate = GateMode::softplus;
  const Inputs good = make_inputs(c, 8);
  const HostTensor d_o = testing::randn({1, c.T, c.HV, c.V}, 3);

  // Each mutation makes one argument bad; all three entries must reject it with the name.
  struct Bad {
    const char* what;
    std::function<void(Inputs&, KdaParams&)> mutate;
    std::vector<std::string> needles;
  };
  const std::vector<Bad> bads = {
      {"q rank", [](Inputs& in, KdaParams&) { in.q = HostTensor(DType::f64, {6, 2, 4}); }, {"q", "rank 4", "[B, T, H, K]"}},
      {"k shape", [](Inputs& in, KdaParams&) { in.k = HostTensor(DType::f64, {1, 6, 2, 5}); }, {"k", "[1, 6, 2, 4]", "[1, 6, 2, 5]"}},
      {"v T", [](Inputs& in, KdaParams&) { in.v = HostTensor(DType::f64, {1, 5, 4, 3}); }, {"v", "[B, T, HV, V]"}},
      {"HV not multiple", [](Inputs& in, KdaParams&) {
         in.v = HostTensor(DType::f64, {1, 6, 3, 3});
         in.g = HostTensor(DType::f64, {1, 6, 3, 4});
         in.beta = HostTensor(DType::f64, {1, 6, 3});
       }, {"v", "multiple", "H = 2", "HV = 3"}},
      {"g shape", [](Inputs& in, KdaParams&) { in.g = HostTensor(DType::f64, {1, 6, 2, 4}); }, {"g", "[B, T, HV, K]"}},
      {"beta shape", [](Inputs& in, KdaParams&) { in.beta = HostTensor(DType::f64, {1, 6, 4, 1}); }, {"beta", "[B, T, HV]"}},
      {"k dtype", [](Inputs& in, KdaParams&) { in.k = in.k.to(DType::f32); }, {"k", "float64", "float32"}},
      {"q dtype int", [](Inputs& in, KdaParams&) { in.q = HostTensor(DType::i32, {1, 6, 2, 4}); }, {"q", "int32"}},
      {"A_log missing", [](Inputs& in, KdaParams&) { in.A_log = HostTensor(); }, {"A_log", "required"}},
      {"A_log shape", [](Inputs& in, KdaParams&) { in.A_log = HostTensor(DType::f64, {2}); }, {"A_log", "[HV]"}},
      {"dt_bias shape", [](Inputs& in, KdaParams&) { in.dt_bias = HostTensor(DType::f64, {4}); }, {"dt_bias", "[HV * K]"}},
      {"initial_state shape", [](Inputs& in, KdaParams&) { in.h0 = HostTensor(DType::f64, {1, 4, 3, 4}); }, {"initial_state", "[N, HV, K, V]"}},
      {"initial_state dtype", [](Inputs& in, KdaParams&) { in.h0 = in.h0.to(DType::bf16); }, {"initial_state", "bfloat16"}},
      {"cu_seqlens start", [](Inputs& in, KdaParams&) { in.cu = testing::int_tensor({1, 6}); }, {"cu_seqlens", "start at 0"}},
      {"cu_seqlens decreasing", [](Inputs& in, KdaParams&) { in.cu = testing::int_tensor({0, 4, 3, 6}); }, {"cu_seqlens", "non-decreasing"}},
      {"cu_seqlens end", [](Inputs& in, KdaParams&) { in.cu = testing::int_tensor({0, 5}); }, {"cu_seqlens", "6", "got 5"}},
      {"cu_seqlens dtype", [](Inputs& in, KdaParams&) { in.cu = HostTensor(DType::f32, {2}); }, {"cu_seqlens", "int32/int64"}},
      {"cu_seqlens with B != 1", [](Inputs& in, KdaParams&) {
         in.q = HostTensor(DType::f64, {2, 3, 2, 4});
         in.k = HostTensor(DType::f64, {2, 3, 2, 4});
         in.v = HostTensor(DType::f64, {2, 3, 4, 3});
         in.g = HostTensor(DType::f64, {2, 3, 4, 4});
         in.beta = HostTensor(DType::f64, {2, 3, 4});
         in.cu = testing::int_tensor({0, 3});
       }, {"cu_seqlens", "B == 1", "B = 2"}},
      {"chunk_size", [](Inputs&, KdaParams& p) { p.chunk_size = 16; }, {"chunk_size", "32 or 64", "16"}},
      {"allow_neg_eigval", [](Inputs&, KdaParams& p) { p.allow_neg_eigval = true; }, {"allow_neg_eigval", "use_beta_sigmoid_in_kernel"}},
      {"A_log without gate", [](Inputs&, KdaParams& p) { p.use_gate_in_kernel = false; }, {"A_log", "use_gate_in_kernel"}},
      {"scale", [](Inputs&, KdaParams& p) { p.scale = NAN; }, {"scale", "finite"}},
  };

  for (const Bad& bad : bads) {
    Inputs in = good;
    KdaParams p = c.params();
    bad.mutate(in, p);
    const bool has_cu = !in.cu.sizes().empty();
    const TensorView A = in.A_log.view(), bias = in.dt_bias.view(), h0 = in.h0.view(), cu = in.cu.view();
    const TensorView* A_ptr = in.A_log.sizes().empty() ? nullptr : &A;
    const TensorView* h0_ptr = in.h0.sizes().empty() ? nullptr : &h0;
    const int64_t B = in.q.sizes().size() == 4 ? in.q.size(0) : 1;
    HostTensor o(DType::f64, {B, in.v.size(1), in.v.size(2), in.v.size(3)});
    HostTensor ht(DType::f64, in.h0.sizes().empty() ? c.state_sizes() : in.h0.sizes());
    const TensorView ht_v = ht.view();
    for (Form form : {Form::chunk, Form::recurrent}) {
      SCOPED_TRACE(bad.what);
      expect_error([&] {
        forward(form, in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), A_ptr, &bias, h0_ptr,
                has_cu ? &cu : nullptr, p, o.view(), &ht_v);
      }, bad.needles);
    }
    SCOPED_TRACE(bad.what);
    HostTensor dq(DType::f64, in.q.sizes()), dk(DType::f64, in.k.sizes()), dv(DType::f64, in.v.sizes()),
        dg(DType::f64, in.g.sizes()), db(DType::f64, in.beta.sizes());
    expect_error([&] {
      chunk_kda_bwd(in.q.view(), in.k.view(), in.v.view(), in.g.view(), in.beta.view(), A_ptr, &bias, h0_ptr,
                    has_cu ? &cu : nullptr, p, o.view(), nullptr, dq.view(), dk.view(), dv.view(), dg.view(),
                    db.view(), nullptr, nullptr, nullptr);
    }, bad.needles);
  }

  // The scratch size depends on q's dtype (bf16 scratch for 16-bit inputs); an integer or fp8 one is no KDA input.
  for (DType bad_dtype : {DType::i32, DType::fp8_e4m3})
    expect_error([&] { chunk_kda_workspace_bytes(1, 64, 2, 2, 64, 64, -1, true, bad_dtype); },
                 {"input_dtype", dtype_name(bad_dtype), "bfloat16"});

  // Device, outputs and flag consistency.
  const TensorView A = good.A_log.view(), bias = good.dt_bias.view(), h0 = good.h0.view();
  HostTensor o(DType::f64, {1, c.T, c.HV, c.V}), ht(DType::f64, c.state_sizes());
  const TensorView ht_v = ht.view();
  const KdaParams p = c.params();
  TensorView k_cuda = good.k.view();
  k_cuda.device = Device::cuda(0);
  expect_error([&] {
    chunk_kda_fwd(good.q.view(), k_cuda, good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0, nullptr, p,
                  o.view(), &ht_v);
  }, {"k", "cuda:0", "cpu"});
  expect_error([&] {
    chunk_kda_fwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0,
                  nullptr, p, o.view(), nullptr);
  }, {"final_state", "output_final_state"});
  // intermediate_states: shape (chunk count, layout, rank), dtype, device; fixed length and varlen.
  {
    Case hc = c;
    hc.intermediate_states = true;
    auto fwd_h = [&](const HostTensor& h, const TensorView* cu, const KdaParams& params) {
      const TensorView h_v = h.view();
      chunk_kda_fwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0, cu,
                    params, o.view(), &ht_v, &h_v);
    };
    const HostTensor h_ok(DType::f64, hc.intermediate_sizes());  // [1, 1, HV, K, V]: T = 6 is one chunk
    EXPECT_NO_THROW(fwd_h(h_ok, nullptr, p));
    expect_error([&] { fwd_h(HostTensor(DType::f64, {1, 2, c.HV, c.K, c.V}), nullptr, p); },
                 {"intermediate_states", "[B, NT, HV, K, V]", "ceil(T / chunk_size)", "[1, 1, 4, 4, 3]"});
    expect_error([&] { fwd_h(HostTensor(DType::f64, {1, c.HV, c.K, c.V}), nullptr, p); },
                 {"intermediate_states", "rank"});
    expect_error([&] { fwd_h(HostTensor(DType::bf16, hc.intermediate_sizes()), nullptr, p); },
                 {"intermediate_states", "bfloat16"});
    KdaParams v_first = p;
    v_first.state_v_first = true;
    const HostTensor h0_vf(DType::f64, {1, c.HV, c.V, c.K});
    HostTensor ht_vf(DType::f64, {1, c.HV, c.V, c.K});
    const TensorView h0_vf_v = h0_vf.view(), ht_vf_v = ht_vf.view(), h_ok_v = h_ok.view();
    expect_error([&] {
      chunk_kda_fwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0_vf_v,
                    nullptr, v_first, o.view(), &ht_vf_v, &h_ok_v);
    }, {"intermediate_states", "[B, NT, HV, V, K]", "state_v_first"});
    // varlen: lengths 0, 1, 5 with chunk 64 -> 2 chunks
    const HostTensor cu3 = testing::int_tensor({0, 0, 1, 6}), h0_3(DType::f64, {3, c.HV, c.K, c.V});
    HostTensor ht_3(DType::f64, {3, c.HV, c.K, c.V});
    const TensorView cu3_v = cu3.view(), h0_3_v = h0_3.view(), ht_3_v = ht_3.view();
    auto fwd_varlen = [&](const HostTensor& h) {
      const TensorView h_v = h.view();
      chunk_kda_fwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0_3_v,
                    &cu3_v, p, o.view(), &ht_3_v, &h_v);
    };
    EXPECT_NO_THROW(fwd_varlen(HostTensor(DType::f64, {1, 2, c.HV, c.K, c.V})));
    expect_error([&] { fwd_varlen(HostTensor(DType::f64, {1, 3, c.HV, c.K, c.V})); },
                 {"intermediate_states", "[1, NT, HV, K, V]", "sum over sequences", "[1, 2, 4, 4, 3]"});
    TensorView h_cuda = h_ok.view();
    h_cuda.device = Device::cuda(0);
    expect_error([&] {
      chunk_kda_fwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0,
                    nullptr, p, o.view(), &ht_v, &h_cuda);
    }, {"intermediate_states", "cuda:0", "cpu"});
  }
  HostTensor o_bad(DType::f32, {1, c.T, c.HV, c.V});
  expect_error([&] {
    kda_recurrent_fwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0,
                      nullptr, p, o_bad.view(), &ht_v);
  }, {"o", "float32"});
  // every tensor on CUDA: validated, then the missing kernel is reported
  auto on_cuda = [](TensorView t) { t.device = Device::cuda(0); return t; };
  const TensorView A_c = on_cuda(A), bias_c = on_cuda(bias), h0_c = on_cuda(h0), ht_c = on_cuda(ht_v);
  expect_error([&] {
    chunk_kda_fwd(on_cuda(good.q.view()), on_cuda(good.k.view()), on_cuda(good.v.view()), on_cuda(good.g.view()),
                  on_cuda(good.beta.view()), &A_c, &bias_c, &h0_c, nullptr, p, on_cuda(o.view()), &ht_c);
  }, {"chunk_kda_fwd"});
  HostTensor dq(DType::f64, good.q.sizes()), dk(DType::f64, good.k.sizes()), dv(DType::f64, good.v.sizes()),
      dg(DType::f64, good.g.sizes()), db(DType::f64, good.beta.sizes()), dh0(DType::f64, c.state_sizes()),
      dA(DType::f64, {c.HV});
  const TensorView dh0_v = dh0.view(), dA_v = dA.view();
  auto bwd = [&](const TensorView* dht, const TensorView* h0_arg, const TensorView* dh0_arg, const TensorView* A_arg,
                 const TensorView* dA_arg, const KdaParams& params) {
    chunk_kda_bwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), A_arg, &bias, h0_arg,
                  nullptr, params, d_o.view(), dht, dq.view(), dk.view(), dv.view(), dg.view(), db.view(), dh0_arg,
                  dA_arg, nullptr);
  };
  KdaParams no_final = p;
  no_final.output_final_state = false;
  expect_error([&] { bwd(&ht_v, &h0, &dh0_v, &A, &dA_v, no_final); }, {"dht", "output_final_state"});
  expect_error([&] { bwd(nullptr, nullptr, &dh0_v, &A, &dA_v, p); }, {"dh0", "initial_state"});
  const HostTensor dA_bad(DType::f64, {3});
  const TensorView dA_bad_v = dA_bad.view();
  expect_error([&] { bwd(nullptr, &h0, &dh0_v, &A, &dA_bad_v, p); }, {"dA_log", "[HV]"});
  const HostTensor dq_bad(DType::f64, {1, c.T, c.H, c.K + 1});
  expect_error([&] {
    chunk_kda_bwd(good.q.view(), good.k.view(), good.v.view(), good.g.view(), good.beta.view(), &A, &bias, &h0,
                  nullptr, p, d_o.view(), nullptr, dq_bad.view(), dk.view(), dv.view(), dg.view(), db.view(), nullptr,
                  nullptr, nullptr);
  }, {"dq", "[B, T, H, K]"});
}

}  // namespace
}  // namespace seqmix

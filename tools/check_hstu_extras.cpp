// `seqmix check` rows for the HSTU extras: the attention truncation plan and row gather against a
// per-sequence brute force (and finite differences for the backward), the FP8 quantizers'
// descales against a brute-force amax per group and their round-trip error.
#include <algorithm>
#include <cmath>

#include "check.h"
#include "common/numeric.h"
#include "seqmix/device.h"
#include "seqmix/hstu_fp8.h"
#include "seqmix/hstu_truncation.h"

namespace seqmix::tools {
namespace {

HostTensor ints(const std::vector<int64_t>& values) {
  HostTensor t(DType::i64, {static_cast<int64_t>(values.size())});
  for (size_t i = 0; i < values.size(); ++i) t.data_as<int64_t>()[i] = values[i];
  return t;
}

HostTensor deterministic(std::vector<int64_t> sizes, DType dtype, double scale) {
  HostTensor t(dtype, std::move(sizes));
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, scale * std::sin(0.7 * static_cast<double>(i) + 0.3) * (1 + i % 5));
  return t;
}

std::vector<CheckRow> check_truncation() {
  const std::vector<int64_t> offsets = {0, 9, 12, 22, 24, 37};
  const std::vector<int64_t> targets = {2, 1, 3, 0, 4};
  const HstuTruncationParams params{4, 2};
  const HostTensor seq = ints(offsets), nt = ints(targets);
  const TensorView nt_view = nt.view();
  const int64_t batch = 5, rows = offsets.back(), width = 6;
  const HstuTruncationSizes sizes = hstu_truncation_sizes(seq.view(), &nt_view, params);

  // Brute force: [contextual | last min(U, tail) history | targets], whole when U <= tail.
  std::vector<int64_t> kept;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t s = offsets[b], e = offsets[b + 1], history = e - s - params.contextual_seq_len - targets[b];
    for (int64_t r = s; r < e; ++r) {
      const int64_t p = r - s;
      const bool in_dropped = history > params.truncate_tail_len && p >= params.contextual_seq_len &&
                              p < params.contextual_seq_len + history - params.truncate_tail_len;
      if (!in_dropped) kept.push_back(r);
    }
  }
  std::vector<CheckRow> out;
  HostTensor new_lengths(DType::i64, {batch}), new_offsets(DType::i64, {batch + 1}), head(DType::i64, {batch + 1}),
      tail(DType::i64, {batch + 1}), gather(DType::i64, {sizes.new_total});
  CheckRow plan_row{"hstu_truncation_plan"};
  plan_row.ms = time_ms([&] {
    hstu_truncation_plan(seq.view(), &nt_view, params, new_lengths.view(), new_offsets.view(), head.view(), tail.view(),
                         gather.view());
  });
  if (gather.numel() == static_cast<int64_t>(kept.size())) {
    compare(gather, ints(kept), plan_row);
  } else {
    plan_row.max_abs_err = INFINITY;
  }
  out.push_back(plan_row);

  const HostTensor x = deterministic({rows, width}, DType::f32, 1.0);
  HostTensor y(DType::f32, {sizes.new_total, width}), y_ref(DType::f32, {sizes.new_total, width});
  for (int64_t i = 0; i < sizes.new_total && i < static_cast<int64_t>(kept.size()); ++i)
    for (int64_t c = 0; c < width; ++c) y_ref.set(i * width + c, x.get(kept[static_cast<size_t>(i)] * width + c));
  CheckRow fwd_row{"jagged_gather_rows_fwd"};
  fwd_row.ms = time_ms([&] { jagged_gather_rows_fwd(x.view(), gather.view(), y.view()); });
  compare(y, y_ref, fwd_row);
  out.push_back(fwd_row);

  // Backward against central differences of sum(y * w) in f64.
  HostTensor x64 = x.to(DType::f64);
  const HostTensor w = deterministic({sizes.new_total, width}, DType::f64, 0.5);
  HostTensor dx(DType::f64, {rows, width});
  CheckRow bwd_row{"jagged_gather_rows_bwd (finite differences)"};
  bwd_row.tolerance = 1e-7;
  bwd_row.ms = time_ms([&] { jagged_gather_rows_bwd(w.view(), gather.view(), dx.view()); });
  auto loss = [&] {
    HostTensor y64(DType::f64, {sizes.new_total, width});
    jagged_gather_rows_fwd(x64.view(), gather.view(), y64.view());
    double s = 0.0;
    for (int64_t i = 0; i < y64.numel(); ++i) s += y64.get(i) * w.get(i);
    return s;
  };
  compare(dx, numeric_gradient(x64, loss), bwd_row);
  out.push_back(bwd_row);
  return out;
}

std::vector<CheckRow> check_fp8() {
  const std::vector<int64_t> offsets = {0, 11, 12, 40, 53};
  const HostTensor seq = ints(offsets);
  const int64_t tokens = offsets.back(), heads = 2, dim = 8;
  const HostTensor x = deterministic({tokens, heads, dim}, DType::bf16, 2.0);
  std::vector<CheckRow> out;
  const HstuFp8Params modes[] = {{1, false, 128}, {1, true, 8}, {2, false, 8}, {3, false, 128}, {4, false, 128},
                                 {5, false, 128}};
  for (const HstuFp8Params& p : modes) {
    const std::string name = "hstu_fp8_quantize mode " + std::to_string(p.quant_mode) + (p.transposed ? "t" : "");
    HostTensor x_fp8(DType::fp8_e4m3, {tokens, heads, dim});
    HostTensor descale(DType::f32, hstu_fp8_descale_shape(seq.view(), heads, dim, p));
    CheckRow row{name + " descale vs amax"};
    row.ms = time_ms([&] { hstu_fp8_quantize(x.view(), seq.view(), p, x_fp8.view(), descale.view()); });
    // Every element's |x| / descale must stay <= 448 (up to the f32/bf16 roundings of the
    // descale), and each group must reach its amax: so max over the group of |x| / descale / 448
    // is 1 to within 2^-7. The row reports the worst deviation from 1 over the groups.
    HostTensor ratio_max(DType::f64, descale.sizes());
    HostTensor deq(DType::f64, {tokens, heads, dim});
    hstu_fp8_dequantize(x_fp8.view(), descale.view(), seq.view(), p, deq.view());
    for (int64_t i = 0; i < x.numel(); ++i) {
      if (x_fp8.get(i) == 0.0) continue;
      // the element's descale is deq / x_fp8 exactly
      const double d = deq.get(i) / x_fp8.get(i);
      const double ratio = std::fabs(x.get(i)) / d / numeric::kFp8E4m3Max;
      for (int64_t g = 0; g < descale.numel(); ++g) {
        if (descale.get(g) == d) ratio_max.set(g, std::max(ratio_max.get(g), ratio));
      }
    }
    for (int64_t g = 0; g < descale.numel(); ++g) {
      if (ratio_max.get(g) > 0.0) row.max_abs_err = std::max(row.max_abs_err, std::fabs(ratio_max.get(g) - 1.0));
    }
    row.max_rel_err = row.max_abs_err;
    row.tolerance = std::ldexp(1.0, -7);
    out.push_back(row);

    // Round trip: |fake - x| <= 2^-4 |x| + 2^-10 descale (e4m3: 3 mantissa bits, subnormal step
    // 2^-9); the row reports the worst error over that bound.
    CheckRow trip{name + " round trip / e4m3 bound"};
    HostTensor fake(DType::f64, {tokens, heads, dim});
    trip.ms = time_ms([&] { hstu_fp8_fake_quantize(x.view(), seq.view(), p, fake.view()); });
    double max_descale = 0.0;
    for (int64_t g = 0; g < descale.numel(); ++g) max_descale = std::max(max_descale, descale.get(g));
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double bound = std::ldexp(std::fabs(x.get(i)), -4) + std::ldexp(max_descale, -10);
      trip.max_rel_err = std::max(trip.max_rel_err, std::fabs(fake.get(i) - x.get(i)) / bound);
    }
    trip.max_abs_err = trip.max_rel_err;
    trip.tolerance = 1.0 + std::ldexp(1.0, -7);
    out.push_back(trip);
  }
  return out;
}

// CUDA truncation (plan on the device, gather fwd/bwd in bf16) against the CPU backend: exact.
std::vector<CheckRow> check_truncation_cuda() {
  std::vector<int64_t> offsets = {0};
  std::vector<int64_t> targets;
  for (int64_t b = 0; b < 64; ++b) {
    offsets.push_back(offsets.back() + 3 + (b * 37) % 200);
    targets.push_back(b % 5);
  }
  const HstuTruncationParams params{32, 3};
  const int64_t batch = 64, rows = offsets.back(), width = 8 * 128;
  const HostTensor seq = ints(offsets), nt = ints(targets);
  const TensorView nt_view = nt.view();
  HostTensor nl(DType::i64, {batch}), no(DType::i64, {batch + 1}), oh(DType::i64, {batch + 1}),
      ot(DType::i64, {batch + 1}), gi(DType::i64, {rows});
  hstu_truncation_plan(seq.view(), &nt_view, params, nl.view(), no.view(), oh.view(), ot.view(), gi.view());
  const HostTensor x = deterministic({rows, width}, DType::bf16, 1.0);
  HostTensor y(DType::bf16, {rows, width}), dx(DType::bf16, {rows, width});
  jagged_gather_rows_fwd(x.view(), gi.view(), y.view());
  jagged_gather_rows_bwd(y.view(), gi.view(), dx.view());

  CudaTensor d_seq = CudaTensor::from_host(seq), d_nt = CudaTensor::from_host(nt), d_nl(DType::i64, {batch}),
             d_no(DType::i64, {batch + 1}), d_oh(DType::i64, {batch + 1}), d_ot(DType::i64, {batch + 1}),
             d_gi(DType::i64, {rows});
  const TensorView d_nt_view = d_nt.view();
  auto plan = [&] {
    hstu_truncation_plan(d_seq.view(), &d_nt_view, params, d_nl.view(), d_no.view(), d_oh.view(), d_ot.view(),
                         d_gi.view());
  };
  plan();  // warm-up (module load)
  cuda_synchronize();
  std::vector<CheckRow> out;
  CheckRow plan_row{"hstu_truncation_plan B64 vs cpu"};
  plan_row.ms = time_ms([&] {
    plan();
    cuda_synchronize();
  });
  compare(d_gi.to_host(), gi, plan_row);
  compare(d_no.to_host(), no, plan_row);
  out.push_back(plan_row);

  CudaTensor d_x = CudaTensor::from_host(x), d_y(DType::bf16, {rows, width}), d_dx(DType::bf16, {rows, width});
  CheckRow fwd_row{"jagged_gather_rows_fwd bf16 vs cpu"};
  fwd_row.ms = time_ms([&] {
    jagged_gather_rows_fwd(d_x.view(), d_gi.view(), d_y.view());
    cuda_synchronize();
  });
  compare(d_y.to_host(), y, fwd_row);
  out.push_back(fwd_row);
  CheckRow bwd_row{"jagged_gather_rows_bwd bf16 vs cpu"};
  bwd_row.ms = time_ms([&] {
    jagged_gather_rows_bwd(d_y.view(), d_gi.view(), d_dx.view());
    cuda_synchronize();
  });
  compare(d_dx.to_host(), dx, bwd_row);
  out.push_back(bwd_row);
  return out;
}

std::vector<CheckRow> check_hstu_extras(Device device) {
  if (device.type == DeviceType::cuda) return check_truncation_cuda();  // the FP8 quantizers are CPU-only
  std::vector<CheckRow> rows = check_truncation();
  for (CheckRow& r : check_fp8()) rows.push_back(r);
  return rows;
}

const CheckRegistrar registrar("hstu_extras", check_hstu_extras);

}  // namespace
}  // namespace seqmix::tools

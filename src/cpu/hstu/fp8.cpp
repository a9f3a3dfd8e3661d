#include "cpu/hstu/fp8.h"

#include <cmath>
#include <limits>

#include "common/numeric.h"
#include "common/parallel.h"

namespace seqmix::cpu {
namespace {

// fbgemm clamps every descale from below with torch.tensor([1e-6], dtype=torch.float32).
const double kDescaleFloor = static_cast<double>(1e-6f);
// CUDA divides a tensor by a Python scalar as x * (1 / scalar) with the reciprocal in opmath.
const double kInvFp8MaxF32 = static_cast<double>(1.0f / static_cast<float>(numeric::kFp8E4m3Max));
const double kInvFp8MaxF64 = 1.0 / numeric::kFp8E4m3Max;

double round_f32(double v) { return static_cast<double>(static_cast<float>(v)); }

// Rounds a value computed in opmath (f32 for bf16/f16/f32, f64 for f64) to `dtype`.
double round_to(DType dtype, double v) {
  switch (dtype) {
    case DType::f64: return v;
    case DType::bf16: return numeric::round_to_bf16(v);
    case DType::f16: return numeric::round_to_f16(v);
    default: return round_f32(v);
  }
}

// NaN-propagating max, as torch.amax / torch.max.
double nan_max(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::numeric_limits<double>::quiet_NaN();
  return a > b ? a : b;
}

// amax / 448 as fbgemm's torch code computes it on CUDA in `division_dtype`, stored as the f32
// descale and clamped from below by 1e-6.
double descale_from_amax(double amax, DType division_dtype) {
  double quotient;
  if (division_dtype == DType::f64) {
    quotient = amax * kInvFp8MaxF64;
  } else {
    quotient = round_to(division_dtype, round_f32(round_f32(amax) * kInvFp8MaxF32));
  }
  return nan_max(round_f32(quotient), kDescaleFloor);
}

bool is_block_mode(const HstuFp8Params& p) { return p.quant_mode == 2 || (p.quant_mode == 1 && p.transposed); }

// Maps element (token, head, dim) to its descale entry for the mode's layout.
struct GroupMap {
  const HstuFp8Layout& layout;
  const HstuFp8Params& params;
  std::vector<int64_t> token_seq;    // [L] sequence of each token
  std::vector<int64_t> token_block;  // [L] global block of each token (block modes)
  int64_t num_blocks = 0;

  GroupMap(const HstuFp8Layout& l, const HstuFp8Params& p) : layout(l), params(p) {
    token_seq.resize(static_cast<size_t>(l.tokens));
    token_block.resize(static_cast<size_t>(l.tokens));
    const std::vector<int64_t> blocks = hstu_fp8_block_offsets(l.seq_offsets, p.block_size);
    num_blocks = blocks.back();
    for (size_t b = 0; b + 1 < l.seq_offsets.size(); ++b) {
      for (int64_t t = l.seq_offsets[b]; t < l.seq_offsets[b + 1]; ++t) {
        token_seq[static_cast<size_t>(t)] = static_cast<int64_t>(b);
        token_block[static_cast<size_t>(t)] = blocks[b] + (t - l.seq_offsets[b]) / p.block_size;
      }
    }
  }

  int64_t operator()(int64_t t, int64_t h, int64_t d) const {
    const size_t ti = static_cast<size_t>(t);
    switch (params.quant_mode) {
      case 1:
        if (params.transposed) return (token_block[ti] * layout.heads + h) * layout.dim + d;
        return h * layout.tokens + t;
      case 2: return h * num_blocks + token_block[ti];
      case 3: return token_seq[ti] * layout.heads + h;
      case 4: return token_seq[ti];
      default: return 0;  // modes 0 and 5: one descale
    }
  }
};

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

}  // namespace

double torch_cast_to_fp8_e4m3(double value) {
  return numeric::round_to_fp8_e4m3(round_f32(value));
}

HstuFp8Params hstu_fp8_operand_params(int64_t quant_mode, int64_t head_dim, bool backward, HstuFp8Operand operand,
                                      bool transposed) {
  HstuFp8Params p;
  p.quant_mode = quant_mode;
  if (quant_mode == 1) p.transposed = transposed;
  if (quant_mode == 2) {
    const HstuFp8BlockSizes sizes = hstu_fp8_block_sizes(head_dim, false, backward);
    const bool query_side = operand == HstuFp8Operand::q || operand == HstuFp8Operand::dout;
    p.block_size = query_side ? sizes.q_block : sizes.kv_block;
  }
  return p;
}

std::vector<int64_t> hstu_fp8_block_offsets(const std::vector<int64_t>& seq_offsets, int64_t block_size) {
  std::vector<int64_t> blocks(seq_offsets.size(), 0);
  for (size_t b = 0; b + 1 < seq_offsets.size(); ++b) {
    const int64_t length = seq_offsets[b + 1] - seq_offsets[b];
    blocks[b + 1] = blocks[b] + (length + block_size - 1) / block_size;
  }
  return blocks;
}

std::vector<int64_t> hstu_fp8_descale_shape(const HstuFp8Layout& layout, const HstuFp8Params& params) {
  const int64_t batch = static_cast<int64_t>(layout.seq_offsets.size()) - 1;
  const int64_t blocks = hstu_fp8_block_offsets(layout.seq_offsets, params.block_size).back();
  switch (params.quant_mode) {
    case 1:
      if (params.transposed) return {blocks, layout.heads, layout.dim};
      return {layout.heads, layout.tokens};
    case 2: return {layout.heads, blocks};
    case 3: return {batch, layout.heads};
    case 4: return {batch};
    default: return {1};
  }
}

HstuFp8Quantized hstu_fp8_quantize(const std::vector<double>& x, DType x_dtype, const HstuFp8Layout& layout,
                                   const HstuFp8Params& params) {
  const GroupMap group(layout, params);
  HstuFp8Quantized out;
  out.x_fp8.resize(x.size());
  out.descale.assign(static_cast<size_t>(shape_numel(hstu_fp8_descale_shape(layout, params))), 0.0);
  if (is_block_mode(params)) out.descale_offsets = hstu_fp8_block_offsets(layout.seq_offsets, params.block_size);
  const int64_t heads = layout.heads;
  const int64_t dim = layout.dim;
  auto element = [&](int64_t t, int64_t h, int64_t d) { return static_cast<size_t>((t * heads + h) * dim + d); };

  if (params.quant_mode == 0) {
    out.descale[0] = 1.0;
    parallel::parallel_for(static_cast<int64_t>(x.size()), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out.x_fp8[static_cast<size_t>(i)] = torch_cast_to_fp8_e4m3(x[static_cast<size_t>(i)]);
    });
    return out;
  }

  // amax per group (an empty group keeps 0 and so gets the 1e-6 floor). Sequential: a cheap
  // O(L H D) pass whose groups span heads in modes 4 and 5.
  std::vector<double> amax(out.descale.size(), 0.0);
  for (int64_t t = 0; t < layout.tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t d = 0; d < dim; ++d) {
        double& a = amax[static_cast<size_t>(group(t, h, d))];
        a = nan_max(a, std::fabs(x[element(t, h, d)]));
      }
    }
  }
  // Modes 1 (rows) and 2 call .to(torch.float32) before dividing by 448; the others divide in x's dtype.
  const bool divide_in_f32 = (params.quant_mode == 1 && !params.transposed) || params.quant_mode == 2;
  const DType division_dtype = divide_in_f32 ? DType::f32 : x_dtype;
  for (size_t g = 0; g < amax.size(); ++g) out.descale[g] = descale_from_amax(amax[g], division_dtype);

  // Mode 4 divides by a 0-dim descale, which does not promote a bf16/f16 x: the descale and the
  // quotient are rounded to x's dtype. Everywhere else x / descale is an f32 (f64 for f64 x) division.
  const bool divide_in_x_dtype = params.quant_mode == 4 && (x_dtype == DType::bf16 || x_dtype == DType::f16);
  parallel::parallel_for(layout.tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t d = 0; d < dim; ++d) {
          const size_t i = element(t, h, d);
          const double descale = out.descale[static_cast<size_t>(group(t, h, d))];
          double quotient;
          if (divide_in_x_dtype) {
            quotient = round_to(x_dtype, round_f32(x[i] / round_to(x_dtype, descale)));
          } else if (x_dtype == DType::f64) {
            quotient = x[i] / descale;
          } else {
            quotient = round_f32(x[i] / descale);
          }
          out.x_fp8[i] = torch_cast_to_fp8_e4m3(quotient);
        }
      }
    }
  });
  return out;
}

std::vector<double> hstu_fp8_dequantize(const std::vector<double>& x_fp8, const std::vector<double>& descale,
                                        const HstuFp8Layout& layout, const HstuFp8Params& params) {
  const GroupMap group(layout, params);
  std::vector<double> x(x_fp8.size());
  parallel::parallel_for(layout.tokens, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t h = 0; h < layout.heads; ++h) {
        for (int64_t d = 0; d < layout.dim; ++d) {
          const size_t i = static_cast<size_t>((t * layout.heads + h) * layout.dim + d);
          x[i] = x_fp8[i] * descale[static_cast<size_t>(group(t, h, d))];
        }
      }
    }
  });
  return x;
}

}  // namespace seqmix::cpu

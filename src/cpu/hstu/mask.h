// The HSTU attention mask as pure integer formulas, shared by the CPU reference and the CUDA
// kernels (compiled __host__ __device__ under nvcc) so both backends attend exactly the same
// (i, j). See include/seqmix/hstu.h for the masks in words.
#pragma once

#include <cstdint>

#include "seqmix/hstu.h"

#if defined(__CUDACC__)
#define SEQMIX_HSTU_MASK_FN __host__ __device__ __forceinline__
#else
#define SEQMIX_HSTU_MASK_FN inline
#endif

namespace seqmix::hstu_mask {

// The options of HstuAttentionParams that shape the mask, as a trivially copyable kernel argument.
struct Options {
  int64_t contextual_seq_len = 0;
  int64_t max_attn_len = 0;
  int64_t min_full_attn_seq_len = 0;
  int64_t sla_k1 = 0;
  int64_t sla_k2 = 0;
  bool causal = true;
};

inline Options options_of(const HstuAttentionParams& p) {
  return {p.contextual_seq_len, p.max_attn_len, p.min_full_attn_seq_len, p.sla_k1, p.sla_k2, p.causal};
}

SEQMIX_HSTU_MASK_FN int64_t min_of(int64_t a, int64_t b) { return a < b ? a : b; }
SEQMIX_HSTU_MASK_FN int64_t max_of(int64_t a, int64_t b) { return a > b ? a : b; }

// The mask of one sequence of `length` tokens.
struct Rule {
  Options o;
  int64_t length;
  bool sla;  // TorchEasyRec builds the SLA mask only when sla_k1 > 0 or sla_k2 > 0
  bool has_targets;
  int64_t max_id;         // GR mask: id of the history boundary
  int64_t history_end;    // SLA: Hb = length - num_targets
  int64_t global_prefix;  // SLA: max(sla_k2, contextual_seq_len)

  // num_targets < 0 means "num_targets not given" (the GR mask treats that case separately).
  SEQMIX_HSTU_MASK_FN static Rule make(const Options& o, int64_t length, int64_t num_targets) {
    Rule r;
    r.o = o;
    r.length = length;
    r.sla = o.sla_k1 > 0 || o.sla_k2 > 0;
    r.has_targets = num_targets >= 0;
    const int64_t targets = max_of(num_targets, 0);
    r.max_id = length;
    if (o.contextual_seq_len > 0) r.max_id -= o.contextual_seq_len - 1;
    r.max_id -= targets;
    r.history_end = max_of(length - targets, 0);
    r.global_prefix = max_of(o.sla_k2, o.contextual_seq_len);
    return r;
  }

  // The GR reference's id transform: the contextual prefix collapses to id 0 and (when
  // num_targets is given) every target to the history boundary's id. Monotone in position.
  SEQMIX_HSTU_MASK_FN int64_t id(int64_t position) const {
    int64_t r = position;
    if (o.contextual_seq_len > 0) r = max_of(r - o.contextual_seq_len + 1, 0);
    if (has_targets) r = min_of(r, max_id);
    return r;
  }

  SEQMIX_HSTU_MASK_FN bool full_row(int64_t row_id) const {
    return o.min_full_attn_seq_len > 0 && row_id >= max_id - o.min_full_attn_seq_len;
  }

  SEQMIX_HSTU_MASK_FN bool allowed(int64_t i, int64_t j) const {
    if (sla) {
      if (i >= history_end) return j < history_end;
      return j < min_of(global_prefix, i + 1) || (j >= max_of(global_prefix, i - o.sla_k1 + 1) && j <= i);
    }
    const int64_t row = id(i);
    const int64_t col = id(j);
    int64_t d = row - col;
    if (!o.causal && d < 0) d = -d;
    bool valid = i == j || d > 0;
    if (o.max_attn_len > 0) valid = valid && (d <= o.max_attn_len || full_row(row));
    if (o.contextual_seq_len > 0) valid = valid || (row == 0 && col < max_id);
    return valid;
  }

  // Up to two column intervals [begin[r], end[r]) of row i outside which nothing is attended;
  // returns the count. When `exact` is set every column inside is attended, otherwise
  // allowed(i, j) must still be evaluated.
  SEQMIX_HSTU_MASK_FN int column_ranges(int64_t i, int64_t begin[2], int64_t end[2], bool& exact) const {
    if (sla) {
      exact = true;
      if (i >= history_end) {
        begin[0] = 0;
        end[0] = history_end;
        return 1;
      }
      begin[0] = 0;
      end[0] = min_of(global_prefix, i + 1);
      begin[1] = max_of(global_prefix, i - o.sla_k1 + 1);
      end[1] = i + 1;
      return 2;
    }
    exact = false;
    const int64_t row = id(i);
    begin[0] = 0;
    end[0] = length;
    if (o.contextual_seq_len > 0 && row == 0) return 1;  // may see the whole history
    // Causal: i == j or id(j) < id(i), which implies j < i (ids are monotone).
    if (o.causal) end[0] = i + 1;
    // The window needs id(j) >= id(i) - max_attn_len, and id(j) <= j.
    if (o.max_attn_len > 0 && !full_row(row)) begin[0] = max_of(0, row - o.max_attn_len);
    return 1;
  }

  // Two row intervals [begin[r], end[r]) (either may be empty) outside which no row attends a
  // column of [j0, j1), 0 <= j0 < j1 <= length: the transpose of column_ranges for a tile of keys,
  // conservative, so a backward pass over key tiles need not scan every query tile.
  SEQMIX_HSTU_MASK_FN void row_ranges(int64_t j0, int64_t j1, int64_t begin[2], int64_t end[2]) const {
    begin[1] = end[1] = 0;
    if (sla) {
      // History rows i >= j attend j < K2 whatever their distance, other j only while i < j + k1 - 1;
      // target rows attend every history column.
      begin[0] = j0;
      end[0] = j0 < global_prefix ? history_end : min_of(history_end, j1 - 1 + o.sla_k1);
      if (j0 < history_end) {
        begin[1] = history_end;
        end[1] = length;
      }
      return;
    }
    begin[0] = 0;
    end[0] = length;
    if (!o.causal) return;
    // Causal: i == j or id(i) > id(j), which needs i > j; or a contextual row (id 0: i < contextual_seq_len).
    begin[0] = j0;
    if (o.contextual_seq_len > 0) end[1] = min_of(o.contextual_seq_len, length);
  }

  // The first position j in [0, length] with id(j) >= x (length when none). Past the
  // contextual prefix and below the target boundary id(j) = j - contextual_seq_len + 1 (or j).
  SEQMIX_HSTU_MASK_FN int64_t first_with_id_at_least(int64_t x) const {
    if (length == 0 || x <= id(0)) return 0;
    if (x > id(length - 1)) return length;
    return o.contextual_seq_len > 0 ? x + o.contextual_seq_len - 1 : x;
  }

  // One interval [begin, end) (possibly empty) of columns that row i certainly attends, so a
  // kernel can skip the per-element mask on tiles inside it. Conservative: the contextual
  // "whole history" rows and the non-causal mask report what the causal rule alone gives.
  SEQMIX_HSTU_MASK_FN void full_columns(int64_t i, int64_t& begin, int64_t& end) const {
    if (sla) {
      if (i >= history_end) {
        begin = 0;
        end = history_end;
        return;
      }
      // The prefix [0, min(K2, i + 1)) and the window [max(K2, i - k1 + 1), i + 1) touch: one run.
      const int64_t window_begin = max_of(global_prefix, i - o.sla_k1 + 1);
      begin = min_of(global_prefix, i + 1) >= window_begin ? 0 : window_begin;
      end = i + 1;
      return;
    }
    begin = end = 0;
    if (!o.causal) return;
    const int64_t row = id(i);
    // Every j below the first position with id(j) >= id(i) has d > 0; j == i is attended too.
    end = first_with_id_at_least(row);
    if (end == i) end = i + 1;
    if (o.max_attn_len > 0 && !full_row(row)) begin = first_with_id_at_least(row - o.max_attn_len);
    if (begin > end) begin = end;
  }
};

}  // namespace seqmix::hstu_mask

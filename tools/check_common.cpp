// `seqmix check` rows for the shared numerics: storage-dtype round trips that every
// family's outputs go through.
#include <cmath>

#include "check.h"
#include "common/numeric.h"

namespace seqmix::tools {
namespace {

std::vector<CheckRow> check_common(Device device) {
  if (device.type != DeviceType::cpu) return {};
  std::vector<CheckRow> rows;
  struct Case {
    const char* name;
    double (*round)(double);
    double relative_step;  // half an ulp of the format, relative
  };
  const Case cases[] = {{"round_to_bf16", numeric::round_to_bf16, std::ldexp(1.0, -8)},
                        {"round_to_f16", numeric::round_to_f16, std::ldexp(1.0, -11)},
                        {"round_to_fp8_e4m3", numeric::round_to_fp8_e4m3, std::ldexp(1.0, -4)},
                        {"round_to_fp8_e5m2", numeric::round_to_fp8_e5m2, std::ldexp(1.0, -3)}};
  for (const Case& c : cases) {
    CheckRow row{c.name};
    row.tolerance = c.relative_step;
    row.ms = time_ms([&] {
      for (int i = 1; i < 2000; ++i) {
        const double x = (1.0 + (i % 97) / 97.0) * (1 + i % 7) * (i % 2 ? -1 : 1);  // normal range of every format
        const double rel = std::fabs(c.round(x) - x) / std::fabs(x);
        row.max_rel_err = std::max(row.max_rel_err, rel);
      }
    });
    row.max_abs_err = row.max_rel_err;  // the bound checked is relative
    rows.push_back(row);
  }
  return rows;
}

const CheckRegistrar registrar("common", check_common);

}  // namespace
}  // namespace seqmix::tools

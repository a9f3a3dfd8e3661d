// seqmix CLI. `seqmix check [--device cpu|cuda|all] [--family NAME]` runs every registered
// family's checks and prints one table; the exit status is 0 only when every row passes.
// Without --device it checks the CPU, and CUDA too when a GPU is present.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "check.h"
#include "common/dispatch.h"
#include "seqmix/device.h"

namespace seqmix::tools {

CheckRegistrar::CheckRegistrar(const char* family, CheckFn fn) {
  registered_checks().push_back({family, std::move(fn)});
}

std::vector<RegisteredCheck>& registered_checks() {
  static std::vector<RegisteredCheck> checks;
  return checks;
}

double time_ms(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

void compare(const HostTensor& got, const HostTensor& reference, CheckRow& row) {
  SEQMIX_CHECK(got.numel() == reference.numel(), "check ", row.op, ": ", got.numel(), " vs ", reference.numel(),
               " elements");
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double diff = std::fabs(got.get(i) - reference.get(i));
    const double rel = diff / std::max(std::fabs(reference.get(i)), 1e-6);
    row.max_abs_err = std::isnan(diff) ? INFINITY : std::max(row.max_abs_err, diff);
    row.max_rel_err = std::isnan(rel) ? INFINITY : std::max(row.max_rel_err, rel);
  }
}

HostTensor numeric_gradient(HostTensor& param, const std::function<double()>& loss, double step) {
  HostTensor g(DType::f64, param.sizes());
  for (int64_t i = 0; i < param.numel(); ++i) {
    const double saved = param.get(i);
    param.set(i, saved + step);
    const double plus = loss();
    param.set(i, saved - step);
    const double minus = loss();
    param.set(i, saved);
    g.set(i, (plus - minus) / (2.0 * step));
  }
  return g;
}

namespace {

void usage() {
  std::puts(
      "usage: seqmix check [--device cpu|cuda|all] [--family NAME]\n"
      "  runs every op on small shapes, compares with the reference and prints a table;\n"
      "  default: the CPU, and CUDA as well when a GPU is present");
}

int run_check(int argc, char** argv) {
  std::vector<Device> devices = {Device::cpu()};
  if (cuda_available()) devices.push_back(Device::cuda(0));
  std::string only_family;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--device") && i + 1 < argc) {
      const std::string d = argv[++i];
      if (d == "cpu") devices = {Device::cpu()};
      else if (d == "cuda") devices = {Device::cuda(0)};
      else if (d == "all") devices = {Device::cpu(), Device::cuda(0)};
      else { std::fprintf(stderr, "--device: expected cpu, cuda or all, got %s\n", d.c_str()); return 2; }
    } else if (!std::strcmp(argv[i], "--family") && i + 1 < argc) {
      only_family = argv[++i];
    } else {
      usage();
      return 2;
    }
  }
  std::printf("%-8s %-6s %-44s %12s %12s %10s %10s  %s\n", "family", "device", "op", "max_abs_err", "max_rel_err",
              "tol", "time_ms", "pass");
  int failed = 0;
  int rows = 0;
  for (const Device device : devices) {
    for (const auto& check : registered_checks()) {
      if (!only_family.empty() && check.family != only_family) continue;
      std::vector<CheckRow> result;
      try {
        result = check.fn(device);
      } catch (const std::exception& e) {
        std::printf("%-8s %-6s %-44s error: %s\n", check.family.c_str(), device_name(device).c_str(), "-", e.what());
        ++rows;
        ++failed;
        continue;
      }
      for (const auto& row : result) {
        ++rows;
        failed += row.pass() ? 0 : 1;
        std::printf("%-8s %-6s %-44s %12.3e %12.3e %10.1e %10.3f  %s\n", check.family.c_str(),
                    device_name(device).c_str(), row.op.c_str(), row.max_abs_err, row.max_rel_err, row.tolerance,
                    row.ms, row.pass() ? "PASS" : "FAIL");
      }
    }
  }
  std::printf("%d passed, %d failed\n", rows - failed, failed);
  return failed == 0 && rows > 0 ? 0 : 1;
}

}  // namespace
}  // namespace seqmix::tools

int main(int argc, char** argv) {
  if (argc >= 2 && !std::strcmp(argv[1], "check")) return seqmix::tools::run_check(argc, argv);
  seqmix::tools::usage();
  return argc >= 2 && (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) ? 0 : 2;
}

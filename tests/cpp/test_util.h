// Shared helpers for the GoogleTest suite: random tensors, error metrics, fp64 finite
// differences and golden-vector files written by tests/golden/gen_*.py on the device.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "seqmix/device.h"
#include "seqmix/tensor.h"

namespace seqmix::testing {

// Normal(0, scale^2) entries, deterministic in `seed`.
HostTensor randn(std::vector<int64_t> sizes, uint64_t seed, double scale = 1.0, DType dtype = DType::f64);
// Uniform [lo, hi) entries.
HostTensor uniform(std::vector<int64_t> sizes, uint64_t seed, double lo, double hi, DType dtype = DType::f64);
// int64/int32 tensor from values.
HostTensor int_tensor(const std::vector<int64_t>& values, DType dtype = DType::i64);
HostTensor int_tensor(const std::vector<int64_t>& values, std::vector<int64_t> sizes, DType dtype = DType::i64);

double max_abs(const HostTensor& t);
double max_abs_diff(const HostTensor& a, const HostTensor& b);
// max |got - ref| / max |ref| (the absolute error when the reference is all zeros).
double scaled_max_error(const HostTensor& got, const HostTensor& ref);
// max |a - b| / max(|b|, floor): relative error against the reference `b`.
double max_rel_diff(const HostTensor& a, const HostTensor& b, double floor = 1e-6);
// sum(out * weights): a scalar loss whose gradient wrt out is `weights`.
double weighted_sum(const HostTensor& out, const HostTensor& weights);

// Compares the analytic gradient `grad` of loss() with respect to `param` with central
// differences (step eps) at up to `max_checks` entries spread over the tensor; fails the
// current test when |analytic - numeric| > atol + rtol * |numeric|. `param` must be f64.
void expect_gradient_matches(HostTensor& param, const HostTensor& grad, const std::function<double()>& loss,
                             const std::string& what, double atol = 1e-7, double rtol = 1e-6, int max_checks = 48,
                             double eps = 1e-6);

// Asserts that `fn` throws seqmix::Error whose message contains every string in `needles`.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles);

// A golden case: named f64 / i64 tensors.
using GoldenCase = std::map<std::string, HostTensor>;
// Reads tests/golden/<relative_path> (the .smxg format of tests/golden/golden_io.py).
GoldenCase load_golden(const std::string& relative_path);
// All .smxg files under tests/golden/<family>/, sorted by name (relative paths).
std::vector<std::string> list_golden(const std::string& family);
// The tensor `name` of a golden case; fails loudly when missing.
const HostTensor& golden_tensor(const GoldenCase& c, const std::string& name);

}  // namespace seqmix::testing

// In a CUDA test: skips when no GPU is visible, unless SEQMIX_TEST_CUDA=1 demands one (then
// the test fails), so a GPU machine can never pass the suite by skipping it.
#define SEQMIX_REQUIRE_CUDA()                                                                  \
  do {                                                                                         \
    if (!::seqmix::cuda_available()) {                                                         \
      const char* demanded = std::getenv("SEQMIX_TEST_CUDA");                                  \
      if (demanded && std::string(demanded) == "1") FAIL() << "SEQMIX_TEST_CUDA=1 but no GPU"; \
      GTEST_SKIP() << "no CUDA device";                                                        \
    }                                                                                          \
  } while (0)

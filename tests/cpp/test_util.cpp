#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

namespace seqmix::testing {

HostTensor randn(std::vector<int64_t> sizes, uint64_t seed, double scale, DType dtype) {
  HostTensor t(dtype, std::move(sizes));
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, dist(rng));
  return t;
}

HostTensor uniform(std::vector<int64_t> sizes, uint64_t seed, double lo, double hi, DType dtype) {
  HostTensor t(dtype, std::move(sizes));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, dist(rng));
  return t;
}

HostTensor int_tensor(const std::vector<int64_t>& values, DType dtype) {
  return int_tensor(values, {static_cast<int64_t>(values.size())}, dtype);
}

HostTensor int_tensor(const std::vector<int64_t>& values, std::vector<int64_t> sizes, DType dtype) {
  HostTensor t(dtype, std::move(sizes));
  EXPECT_EQ(t.numel(), static_cast<int64_t>(values.size()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::i64) t.data_as<int64_t>()[i] = values[static_cast<size_t>(i)];
    else t.set(i, static_cast<double>(values[static_cast<size_t>(i)]));
  }
  return t;
}

double max_abs(const HostTensor& t) {
  double m = 0.0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::fabs(t.get(i)));
  return m;
}

double scaled_max_error(const HostTensor& got, const HostTensor& ref) {
  const double scale = max_abs(ref);
  return max_abs_diff(got, ref) / (scale > 0.0 ? scale : 1.0);
}

double max_abs_diff(const HostTensor& a, const HostTensor& b) {
  EXPECT_EQ(a.numel(), b.numel());
  double m = 0.0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
    const double d = std::fabs(a.get(i) - b.get(i));
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double max_rel_diff(const HostTensor& a, const HostTensor& b, double floor) {
  EXPECT_EQ(a.numel(), b.numel());
  double m = 0.0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
    const double d = std::fabs(a.get(i) - b.get(i)) / std::max(std::fabs(b.get(i)), floor);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double weighted_sum(const HostTensor& out, const HostTensor& weights) {
  EXPECT_EQ(out.numel(), weights.numel());
  double s = 0.0;
  for (int64_t i = 0; i < out.numel(); ++i) s += out.get(i) * weights.get(i);
  return s;
}

void expect_gradient_matches(HostTensor& param, const HostTensor& grad, const std::function<double()>& loss,
                             const std::string& what, double atol, double rtol, int max_checks, double eps) {
  ASSERT_EQ(param.dtype(), DType::f64) << what << ": finite differences need an f64 parameter";
  ASSERT_EQ(param.numel(), grad.numel()) << what;
  const int64_t n = param.numel();
  if (n == 0) return;
  const int64_t stride = std::max<int64_t>(1, n / max_checks);
  int failures = 0;
  for (int64_t i = 0; i < n && failures < 5; i += stride) {
    // odd offsets so small tensors with structure (first/last entries) are covered too
    const int64_t idx = std::min(n - 1, i + (i / stride) % std::max<int64_t>(1, stride));
    double* p = param.data_as<double>() + idx;
    const double saved = *p;
    *p = saved + eps;
    const double plus = loss();
    *p = saved - eps;
    const double minus = loss();
    *p = saved;
    const double numeric = (plus - minus) / (2.0 * eps);
    const double analytic = grad.get(idx);
    if (!(std::fabs(analytic - numeric) <= atol + rtol * std::fabs(numeric))) {
      ADD_FAILURE() << what << "[" << idx << "]: analytic " << analytic << " vs finite-difference " << numeric;
      ++failures;
    }
  }
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "error message \"" << message << "\" lacks \"" << needle
                                                         << "\"";
    }
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected seqmix::Error, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << "expected seqmix::Error mentioning " << (needles.empty() ? "" : needles[0]) << ", nothing thrown";
}

namespace {

constexpr char kGoldenMagic[8] = {'S', 'M', 'X', 'G', '0', '0', '0', '1'};

template <class T>
T read_scalar(std::ifstream& in) {
  T v{};
  in.read(reinterpret_cast<char*>(&v), sizeof(T));
  return v;
}

}  // namespace

GoldenCase load_golden(const std::string& relative_path) {
  const std::string path = std::string(SEQMIX_GOLDEN_DIR) + "/" + relative_path;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("golden file not found: " + path);
  char magic[8];
  in.read(magic, 8);
  if (std::memcmp(magic, kGoldenMagic, 8) != 0) throw Error("not a seqmix golden file: " + path);
  const auto count = read_scalar<uint32_t>(in);
  GoldenCase result;
  for (uint32_t t = 0; t < count; ++t) {
    const auto name_len = read_scalar<uint32_t>(in);
    std::string name(name_len, '\0');
    in.read(name.data(), name_len);
    const auto kind = read_scalar<uint8_t>(in);  // 0 = f64, 1 = i64
    const auto rank = read_scalar<uint8_t>(in);
    std::vector<int64_t> sizes(rank);
    for (auto& s : sizes) s = read_scalar<int64_t>(in);
    HostTensor tensor(kind == 0 ? DType::f64 : DType::i64, sizes);
    in.read(static_cast<char*>(tensor.data()), static_cast<std::streamsize>(tensor.numel() * 8));
    if (!in) throw Error("truncated golden file: " + path);
    result.emplace(name, std::move(tensor));
  }
  return result;
}

std::vector<std::string> list_golden(const std::string& family) {
  std::vector<std::string> files;
  const std::filesystem::path dir = std::filesystem::path(SEQMIX_GOLDEN_DIR) / family;
  if (!std::filesystem::exists(dir)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".smxg") files.push_back(family + "/" + entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

const HostTensor& golden_tensor(const GoldenCase& c, const std::string& name) {
  const auto it = c.find(name);
  if (it == c.end()) throw Error("golden case has no tensor named " + name);
  return it->second;
}

}  // namespace seqmix::testing

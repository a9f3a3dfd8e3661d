// `seqmix check`: each family registers a function that runs its ops on small shapes on a
// device, compares them with the reference (brute force, the recurrent form, fp64 finite
// differences, or the CPU backend for CUDA) and returns one row per op.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "seqmix/tensor.h"

namespace seqmix::tools {

struct CheckRow {
  std::string op;
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;
  double ms = 0.0;    // wall time of the checked call
  double tolerance = 0.0;  // the row passes when max_abs_err <= tolerance
  bool pass() const { return max_abs_err <= tolerance; }
};

using CheckFn = std::function<std::vector<CheckRow>(Device device)>;

// Registers a family at static-initialisation time (the CLI links its objects directly).
struct CheckRegistrar {
  CheckRegistrar(const char* family, CheckFn fn);
};

struct RegisteredCheck {
  std::string family;
  CheckFn fn;
};
std::vector<RegisteredCheck>& registered_checks();

// Wall-clock milliseconds of fn().
double time_ms(const std::function<void()>& fn);

// max |a - b| and max |a - b| / max(|b|, 1e-6) over two tensors of the same size.
void compare(const HostTensor& got, const HostTensor& reference, CheckRow& row);

// Central differences (step `step`) of loss() with respect to every entry of `param`, as f64;
// param is perturbed in place and restored.
HostTensor numeric_gradient(HostTensor& param, const std::function<double()>& loss, double step = 1e-6);

}  // namespace seqmix::tools

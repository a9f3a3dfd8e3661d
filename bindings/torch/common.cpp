#include "common.h"

#include <torch/library.h>
#include <torch/version.h>

#ifdef SEQMIX_TORCH_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace seqmix::torch_binding {
namespace {

DType to_dtype(at::ScalarType type, const char* name) {
  switch (type) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kBFloat16: return DType::bf16;
    case at::kHalf: return DType::f16;
    case at::kInt: return DType::i32;
    case at::kLong: return DType::i64;
#if TORCH_VERSION_MAJOR >= 2
    case at::kFloat8_e4m3fn: return DType::fp8_e4m3;
    case at::kFloat8_e5m2: return DType::fp8_e5m2;
#endif
    default:
      TORCH_CHECK(false, "seqmix: ", name, ": unsupported dtype ", type,
                  " (expected float32, float64, bfloat16, float16, float8, int32 or int64)");
  }
}

Device to_device(const at::Device& device, const char* name) {
  if (device.is_cpu()) return Device::cpu();
  TORCH_CHECK(device.is_cuda(), "seqmix: ", name, ": expected a CPU or CUDA tensor, got device ", device);
  return Device::cuda(device.has_index() ? device.index() : 0);
}

}  // namespace

TensorView view(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), "seqmix: ", name, ": expected a tensor, got an undefined one");
  TORCH_CHECK(t.dim() <= kMaxRank, "seqmix: ", name, ": rank ", t.dim(), " is above the supported ", kMaxRank);
  TensorView v;
  v.data = t.data_ptr();
  v.dtype = to_dtype(t.scalar_type(), name);
  v.device = to_device(t.device(), name);
  v.rank = static_cast<int>(t.dim());
  for (int d = 0; d < v.rank; ++d) {
    v.sizes[d] = t.size(d);
    v.strides[d] = t.stride(d);
  }
  return v;
}

OptionalView::OptionalView(const c10::optional<at::Tensor>& t, const char* name) {
  if (t.has_value() && t->defined()) view_ = view(*t, name);
}

Stream current_stream(const at::Tensor& t) {
#ifdef SEQMIX_TORCH_WITH_CUDA
  if (t.is_cuda()) return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
  (void)t;
  return nullptr;
}

void rethrow_as_torch_error(const Error& error) {
  const std::string message = error.what();
  TORCH_CHECK_NOT_IMPLEMENTED(message.find("not implemented") == std::string::npos, message);
  TORCH_CHECK(false, message);
}

}  // namespace seqmix::torch_binding

// The namespace; each family adds its ops with TORCH_LIBRARY_FRAGMENT(seqmix, m) in its own file.
TORCH_LIBRARY(seqmix, m) {}

// Helpers every family's binding uses: at::Tensor -> seqmix::TensorView, optional tensors, and the
// CUDA stream of the current torch context. Each family registers its ops in bindings/torch/<family>.cpp:
// schemas with TORCH_LIBRARY_FRAGMENT(seqmix, m), one kernel shared by the CPU and CUDA keys (the C++
// API dispatches on the device), a Meta kernel (shapes only, for torch.compile / export) and an
// Autograd kernel (a torch::autograd::Function whose forward and backward call the ops below autograd).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "seqmix/device.h"
#include "seqmix/error.h"
#include "seqmix/tensor.h"

namespace seqmix::torch_binding {

// A view of `t` (data pointer, dtype, device, sizes and strides; any strides). `name` is the argument
// name used in the error for an unsupported dtype, device or rank.
TensorView view(const at::Tensor& t, const char* name);

// The view of an optional tensor; get() is nullptr when it is absent.
class OptionalView {
 public:
  OptionalView(const c10::optional<at::Tensor>& t, const char* name);
  const TensorView* get() const { return view_ ? &*view_ : nullptr; }

 private:
  std::optional<TensorView> view_;
};

// The current torch stream of t's device for CUDA tensors, nullptr (the default stream) otherwise.
// For the C++ entries that take a seqmix::Stream; compiled with CUDA only when the build has it.
Stream current_stream(const at::Tensor& t);

// Rethrows a seqmix::Error as torch's own error (c10::NotImplementedError when the message says
// "not implemented", else c10::Error), so Python sees the RuntimeError / NotImplementedError every
// torch op raises and the exception crosses the dispatcher as the type it is built for.
[[noreturn]] void rethrow_as_torch_error(const Error& error);

// Runs a call into the seqmix C++ API under that translation.
template <class Fn>
void call_seqmix(Fn&& fn) {
  try {
    fn();
  } catch (const Error& error) {
    rethrow_as_torch_error(error);
  }
}

}  // namespace seqmix::torch_binding

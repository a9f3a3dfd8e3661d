"""seqmix for PyTorch: one thin function per op over torch.ops.seqmix.* (autograd and Meta/fake
kernels are registered in C++, bindings/torch). Adding an op: its functions in seqmix/<family>.py and
one import line here."""

from seqmix import _library

_library.load()

from seqmix.hstu import hstu_attention, hstu_mha  # noqa: E402
from seqmix.kda import chunk_kda  # noqa: E402
from seqmix.ttt import chunk_ttt_linear  # noqa: E402

__all__ = ["hstu_attention", "hstu_mha", "chunk_kda", "chunk_ttt_linear"]

"""The .smxg golden-vector format shared with tests/cpp/test_util.cpp.

magic b"SMXG0001", u32 count, then per tensor: u32 name length, name (utf-8),
u8 kind (0 = float64, 1 = int64), u8 rank, i64 sizes[rank], little-endian data.
"""
import struct

import numpy as np

MAGIC = b"SMXG0001"


def _as_numpy(value):
    if hasattr(value, "detach"):  # torch.Tensor without importing torch here
        value = value.detach().cpu()
        value = value.double() if value.is_floating_point() else value.long()
        value = value.numpy()
    return np.asarray(value)


def write_case(path, tensors):
    """tensors: dict name -> torch.Tensor / numpy array / python scalar."""
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(tensors)))
        for name, value in tensors.items():
            arr = _as_numpy(value)
            if np.issubdtype(arr.dtype, np.floating):
                kind, arr = 0, arr.astype("<f8")
            else:
                kind, arr = 1, arr.astype("<i8")
            encoded = name.encode()
            f.write(struct.pack("<I", len(encoded)))
            f.write(encoded)
            f.write(struct.pack("<BB", kind, arr.ndim))
            f.write(struct.pack("<%dq" % arr.ndim, *arr.shape))
            f.write(np.ascontiguousarray(arr).tobytes())


def read_case(path):
    out = {}
    with open(path, "rb") as f:
        assert f.read(8) == MAGIC, path
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            (n,) = struct.unpack("<I", f.read(4))
            name = f.read(n).decode()
            kind, rank = struct.unpack("<BB", f.read(2))
            shape = struct.unpack("<%dq" % rank, f.read(8 * rank))
            count_elems = int(np.prod(shape)) if rank else 1
            data = np.frombuffer(f.read(8 * count_elems), dtype="<f8" if kind == 0 else "<i8")
            out[name] = data.reshape(shape)
    return out

"""Finds and loads the compiled operator library (libseqmix_torch.so) that registers torch.ops.seqmix.*."""

import os

import torch

LIBRARY_NAME = "libseqmix_torch.so"


def library_path():
    """$SEQMIX_TORCH_LIB if set, else the copy next to this package, else the repository's build/."""
    explicit = os.environ.get("SEQMIX_TORCH_LIB")
    if explicit:
        if not os.path.isfile(explicit):
            raise ImportError(f"seqmix: SEQMIX_TORCH_LIB={explicit} is not a file")
        return explicit
    package_dir = os.path.dirname(os.path.abspath(__file__))
    candidates = [
        os.path.join(package_dir, LIBRARY_NAME),
        os.path.join(package_dir, "..", "..", "build", LIBRARY_NAME),
    ]
    for path in candidates:
        if os.path.isfile(path):
            return os.path.normpath(path)
    raise ImportError(
        "seqmix: the operator library was not found (looked at $SEQMIX_TORCH_LIB and "
        + ", ".join(os.path.normpath(p) for p in candidates)
        + "); build it with `cmake --build build --target seqmix_torch`"
    )


def load():
    torch.ops.load_library(library_path())

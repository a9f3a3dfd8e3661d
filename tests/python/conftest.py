# The tests import the in-tree package (python/seqmix), which loads build/libseqmix_torch.so unless
# SEQMIX_TORCH_LIB names the library. Peer checkouts (FLA, generative-recommenders, TorchEasyRec) are
# optional: tests against them skip when peer_path finds none.
import importlib.util
import os
import sys
import types

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "python"))


def peer_path(name, relative):
    """The file `relative` of peer checkout `name` (fla-repo, gr, tzrec): under $SEQMIX_PEERS/<name>, a
    sys.path (PYTHONPATH) entry holding it, or <repo>/peers/<name>; None if absent."""
    roots = []
    if os.environ.get("SEQMIX_PEERS"):
        roots.append(os.path.join(os.environ["SEQMIX_PEERS"], name))
    roots += [p for p in sys.path if p]
    roots.append(os.path.join(REPO, "peers", name))
    for root in roots:
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    return None


def stub_module(module):
    """A stand-in for an uninstalled module: `from module import name` works, calling `name` raises."""
    stub = types.ModuleType(module)

    def missing(attribute):
        if attribute.startswith("__"):
            raise AttributeError(attribute)

        def fail(*args, **kwargs):
            raise ImportError(f"{module}.{attribute}: {module} is not installed")
        return fail

    stub.__getattr__ = missing
    return stub


def load_peer_module(name, relative, stub_modules=()):
    """Loads one peer file as a module without importing its package (whose __init__ may need Triton).
    Each of `stub_modules` that is not installed is replaced while loading by a module whose attributes
    raise when called (for imports the functions under test do not use)."""
    path = peer_path(name, relative)
    if path is None:
        return None
    stubs = []
    for module in stub_modules:
        if importlib.util.find_spec(module) is None:
            stub = types.ModuleType(module)

            sys.modules[module] = stub_module(module)
            stubs.append(module)
    try:
        spec = importlib.util.spec_from_file_location(f"peer_{name}_{relative}".replace("/", "_").replace(".", "_"),
                                                      path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
    finally:
        for module in stubs:
            del sys.modules[module]
    return loaded


def register_fbgemm_jagged_ops():
    """The two fbgemm_gpu ops the peers' PyTorch HSTU references call (jagged_to_padded_dense,
    dense_to_jagged), as differentiable torch compositions, unless fbgemm is loaded. Returns False
    where torch.library cannot register Python kernels."""
    import torch

    try:
        torch.ops.fbgemm.dense_to_jagged
        return True
    except (AttributeError, RuntimeError):
        pass
    try:
        library = torch.library.Library("fbgemm", "DEF")
        library.define("jagged_to_padded_dense(Tensor values, Tensor[] offsets, int[] max_lengths, "
                       "float padding_value=0) -> Tensor")
        library.define("dense_to_jagged(Tensor dense, Tensor[] x_offsets, int? total_L=None) -> (Tensor, Tensor[])")
    except (AttributeError, RuntimeError):
        return False

    def jagged_to_padded_dense(values, offsets, max_lengths, padding_value=0.0):
        bounds, n = offsets[0].tolist(), max_lengths[0]
        rows = []
        for b in range(len(bounds) - 1):
            row = values[bounds[b]:bounds[b + 1]][:n]
            rows.append(torch.nn.functional.pad(row, (0, 0, 0, n - row.shape[0]), value=padding_value))
        return torch.stack(rows)

    def dense_to_jagged(dense, x_offsets, total_L=None):
        bounds = x_offsets[0].tolist()
        return torch.cat([dense[b, :bounds[b + 1] - bounds[b]] for b in range(len(bounds) - 1)]), list(x_offsets)

    library.impl("jagged_to_padded_dense", jagged_to_padded_dense, "CompositeImplicitAutograd")
    library.impl("dense_to_jagged", dense_to_jagged, "CompositeImplicitAutograd")
    register_fbgemm_jagged_ops.library = library  # a Library unregisters its ops when collected
    return True

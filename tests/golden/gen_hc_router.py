"""Golden vectors for the hc (Hyper-Connections) and router families from HF transformers
models/deepseek_v4 (the peer), in float64 on the CPU.

usage: python3 tests/golden/gen_hc_router.py --peers <dir with hf/deepseek_v4> --out tests/golden
       (writes <out>/hc/*.smxg and <out>/router/*.smxg)

The peer's own modeling_deepseek_v4.py is loaded by file path as a submodule of the installed
transformers package (5.17), so its relative imports resolve to transformers' real activations
(ACT2FN["sqrtsoftplus"]), config class, etc. Where transformers is not importable (the CPU dev
machines: Debian's torch 1.13), the transformers internals the file imports are replaced by inert
stubs plus a two-entry ACT2FN (sqrt(softplus(x)) and sigmoid, as transformers defines them) so the
generator can be dry-run; the device run with real transformers is authoritative.

Which peer code produced each case:
  hc/hc_pre_*    DeepseekV4HyperConnection.forward (post, comb, collapsed) + autograd
  hc/hc_post_*   DeepseekV4DecoderLayer.forward's residual update
                 post * attn_output + comb^T @ hidden_states, run through the peer's forward with the
                 sublayers replaced by fixed tensors (the updated streams are captured at ffn_hc's input)
  hc/hc_head_*   DeepseekV4HyperHead.forward + autograd
  router/topk_*  DeepseekV4TopKRouter.forward (logits, weights, indices) + autograd
  router/hash_*  DeepseekV4HashRouter.forward (logits, weights, indices) + autograd

float64: HF upcasts with `.float()` (to float32) inside the HC modules. To keep the golden values
exact in float64, Tensor.float is made the identity on float64 tensors while the peer runs; every
formula, eps and iteration count stays HF's.
"""
import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_case  # noqa: E402

PEER_PACKAGE = "transformers.models.deepseek_v4"
SCORING_FUNCS = {"sqrtsoftplus": 0, "sigmoid": 1}  # RouterScoringFunc in include/seqmix/router.h


# ----------------------------------------------------------------------------- peer loading

def _passthrough(*args, **kwargs):
    """Stub for decorators used bare (@auto_docstring) or with arguments (@deprecate_kwarg(...))."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    return lambda fn: fn


class _StubBase(nn.Module):
    def __init__(self, *args, **kwargs):
        nn.Module.__init__(self)

    def __class_getitem__(cls, item):
        return cls


class _StubModule(types.ModuleType):
    """Capitalised names are stub classes, the rest pass-through decorators / functions."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (_StubBase,), {}) if name[:1].isupper() else _passthrough
        setattr(self, name, value)
        return value


class _SqrtSoftplus(nn.Module):
    def forward(self, x):
        return F.softplus(x).sqrt()


class _Act2Fn(dict):
    def __getitem__(self, key):
        return dict.__getitem__(self, key)()


def _install_transformers_stubs(peer_dir):
    names = ["transformers", "transformers.models", "transformers.initialization", "transformers.activations",
             "transformers.cache_utils", "transformers.generation", "transformers.integrations",
             "transformers.masking_utils", "transformers.modeling_flash_attention_utils",
             "transformers.modeling_layers", "transformers.modeling_outputs", "transformers.modeling_rope_utils",
             "transformers.modeling_utils", "transformers.processing_utils", "transformers.utils",
             "transformers.utils.deprecation", "transformers.utils.generic", "transformers.utils.output_capturing",
             PEER_PACKAGE, PEER_PACKAGE + ".configuration_deepseek_v4"]
    for name in names:
        module = _StubModule(name)
        module.__path__ = []
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    sys.modules[PEER_PACKAGE].__path__ = [peer_dir]
    sys.modules["transformers.activations"].ACT2FN = _Act2Fn(sqrtsoftplus=_SqrtSoftplus, sigmoid=nn.Sigmoid)
    sys.modules["transformers.modeling_rope_utils"].ROPE_INIT_FUNCTIONS = {}
    sys.modules["transformers.modeling_utils"].ALL_ATTENTION_FUNCTIONS = {}
    if not hasattr(nn, "Buffer"):  # torch < 2.5
        nn.Buffer = lambda data, persistent=True: data


def load_peer(peers):
    peer_dir = os.path.join(peers, "hf", "deepseek_v4")
    path = os.path.join(peer_dir, "modeling_deepseek_v4.py")
    try:
        import transformers
        importlib.import_module(PEER_PACKAGE)
        real = True
        print("transformers", transformers.__version__, "torch", torch.__version__)
    except Exception as exc:  # noqa: BLE001 - any import failure means: dry run with stubs
        print("transformers not importable (%s): stubbing its internals for a dry run, torch %s"
              % (exc.__class__.__name__, torch.__version__))
        _install_transformers_stubs(peer_dir)
        real = False
    spec = importlib.util.spec_from_file_location(PEER_PACKAGE + "._seqmix_peer_modeling", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module, real


def make_config(real, **kw):
    base = dict(vocab_size=kw.pop("vocab_size", 16), num_hidden_layers=1, num_attention_heads=1, head_dim=8,
                q_lora_rank=4, o_groups=1, o_lora_rank=4, index_n_heads=1, index_head_dim=4, index_topk=4,
                sliding_window=4, moe_intermediate_size=4)
    base.update(kw)
    if real:
        from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
        return DeepseekV4Config(**base)
    base.setdefault("num_local_experts", base.get("n_routed_experts", 4))
    return types.SimpleNamespace(**base)


@contextlib.contextmanager
def float64_kept():
    original = torch.Tensor.float

    def keep_f64(self, *args, **kwargs):
        if self.dtype == torch.float64 and not args and not kwargs:
            return self
        return original(self, *args, **kwargs)

    torch.Tensor.float = keep_f64
    try:
        yield
    finally:
        torch.Tensor.float = original


def scalar(value, dtype=torch.float64):
    return torch.tensor([value], dtype=dtype)


def randn(*shape, std=1.0):
    return torch.randn(*shape, dtype=torch.float64) * std


# ----------------------------------------------------------------------------- hc

def gen_hc_pre(peer, real, out, name, B, S, H, D, iters, hc_eps=1e-6, rms_eps=1e-6, seed=0):
    torch.manual_seed(seed)
    cfg = make_config(real, hidden_size=D, hc_mult=H, hc_sinkhorn_iters=iters, hc_eps=hc_eps, rms_norm_eps=rms_eps)
    mod = peer.DeepseekV4HyperConnection(cfg).double()
    with torch.no_grad():
        mod.fn.copy_(randn(*mod.fn.shape, std=1.5 / (H * D) ** 0.5))
        mod.base.copy_(randn(*mod.base.shape, std=0.5))
        mod.scale.copy_(torch.rand(3, dtype=torch.float64) + 0.5)
    x = randn(B, S, H, D, std=0.8).requires_grad_(True)
    with float64_kept():
        post, comb, collapsed = mod(x)
    assert post.dtype == comb.dtype == collapsed.dtype == torch.float64
    g_post, g_comb, g_collapsed = randn(*post.shape), randn(*comb.shape), randn(*collapsed.shape)
    torch.autograd.backward([post, comb, collapsed], [g_post, g_comb, g_collapsed])
    write_case(os.path.join(out, name + ".smxg"), {
        "hidden_streams": x, "fn": mod.fn, "base": mod.base, "scale": mod.scale,
        "hc_sinkhorn_iters": scalar(iters, torch.int64), "hc_eps": scalar(hc_eps), "rms_norm_eps": scalar(rms_eps),
        "post": post, "comb": comb, "collapsed": collapsed,
        "grad_post": g_post, "grad_comb": g_comb, "grad_collapsed": g_collapsed,
        "grad_hidden_streams": x.grad, "grad_fn": mod.fn.grad, "grad_base": mod.base.grad, "grad_scale": mod.scale.grad,
    })


def gen_hc_post(peer, out, name, B, S, H, D, seed=0):
    torch.manual_seed(seed)
    residual = randn(B, S, H, D).requires_grad_(True)
    x = randn(B, S, D).requires_grad_(True)
    post = (2 * torch.sigmoid(randn(B, S, H))).requires_grad_(True)
    comb = torch.rand(B, S, H, H, dtype=torch.float64).requires_grad_(True)  # not symmetric: tests comb^T
    captured = {}

    def ffn_hc(streams):
        captured["out"] = streams
        return post.detach(), comb.detach(), streams[:, :, 0]

    layer = types.SimpleNamespace(
        attn_hc=lambda streams: (post, comb, streams[:, :, 0]),
        input_layernorm=lambda h: h,
        self_attn=lambda h, **kwargs: (x, None),
        ffn_hc=ffn_hc,
        post_attention_layernorm=lambda h: h,
        mlp=lambda h, input_ids=None: torch.zeros_like(h),
    )
    peer.DeepseekV4DecoderLayer.forward(layer, residual)
    result = captured["out"]
    g_out = randn(*result.shape)
    grads = torch.autograd.grad(result, [x, residual, post, comb], g_out)
    write_case(os.path.join(out, name + ".smxg"), {
        "x": x, "residual": residual, "post": post, "comb": comb, "out": result, "grad_out": g_out,
        "grad_x": grads[0], "grad_residual": grads[1], "grad_post": grads[2], "grad_comb": grads[3],
    })


def gen_hc_head(peer, real, out, name, B, S, H, D, hc_eps=1e-6, rms_eps=1e-6, seed=0):
    torch.manual_seed(seed)
    cfg = make_config(real, hidden_size=D, hc_mult=H, hc_eps=hc_eps, rms_norm_eps=rms_eps)
    mod = peer.DeepseekV4HyperHead(cfg).double()
    with torch.no_grad():
        mod.hc_fn.copy_(randn(*mod.hc_fn.shape, std=1.5 / (H * D) ** 0.5))
        mod.hc_base.copy_(randn(H, std=0.5))
        mod.hc_scale.copy_(torch.rand(1, dtype=torch.float64) + 0.5)
    x = randn(B, S, H, D, std=0.8).requires_grad_(True)
    with float64_kept():
        result = mod(x)
    g_out = randn(*result.shape)
    result.backward(g_out)
    write_case(os.path.join(out, name + ".smxg"), {
        "hidden_streams": x, "hc_fn": mod.hc_fn, "hc_base": mod.hc_base, "hc_scale": mod.hc_scale,
        "hc_eps": scalar(hc_eps), "rms_norm_eps": scalar(rms_eps), "out": result, "grad_out": g_out,
        "grad_hidden_streams": x.grad, "grad_hc_fn": mod.hc_fn.grad, "grad_hc_base": mod.hc_base.grad,
        "grad_hc_scale": mod.hc_scale.grad,
    })


# ----------------------------------------------------------------------------- router

def _router_case(out, name, mod, hidden, extra, result, scoring, rsf, top_k, with_grad_logits):
    logits, weights, indices = result
    g_weights = randn(*weights.shape)
    tensors, grads = [weights], [g_weights]
    g_logits = None
    if with_grad_logits:
        g_logits = randn(*logits.shape)
        tensors.append(logits)
        grads.append(g_logits)
    torch.autograd.backward(tensors, grads)
    case = {"hidden_states": hidden, "weight": mod.weight, **extra,
            "num_experts_per_tok": scalar(top_k, torch.int64), "routed_scaling_factor": scalar(rsf),
            "scoring_func": scalar(SCORING_FUNCS[scoring], torch.int64),
            "logits": logits, "weights": weights, "indices": indices, "grad_weights": g_weights,
            "grad_hidden_states": hidden.grad, "grad_weight": mod.weight.grad}
    if g_logits is not None:
        case["grad_logits"] = g_logits
    write_case(os.path.join(out, name + ".smxg"), case)


def gen_router_topk(peer, real, out, name, B, S, hidden, experts, top_k, scoring="sqrtsoftplus", rsf=1.5,
                    x_std=1.0, bias_std=0.3, with_grad_logits=True, seed=0):
    torch.manual_seed(seed)
    cfg = make_config(real, hidden_size=hidden, n_routed_experts=experts, num_experts_per_tok=top_k,
                      scoring_func=scoring, routed_scaling_factor=rsf)
    mod = peer.DeepseekV4TopKRouter(cfg).double()
    with torch.no_grad():
        mod.weight.copy_(randn(experts, hidden, std=1.0 / hidden ** 0.5))
        mod.e_score_correction_bias = randn(experts, std=bias_std)
    x = randn(B, S, hidden, std=x_std).requires_grad_(True)
    result = mod(x)
    _router_case(out, name, mod, x, {"e_score_correction_bias": mod.e_score_correction_bias}, result, scoring, rsf,
                 top_k, with_grad_logits)


def gen_router_hash(peer, real, out, name, B, S, hidden, experts, top_k, vocab, scoring="sqrtsoftplus", rsf=1.5,
                    repeats=False, with_grad_logits=True, seed=0):
    torch.manual_seed(seed)
    cfg = make_config(real, vocab_size=vocab, hidden_size=hidden, n_routed_experts=experts, num_experts_per_tok=top_k,
                      scoring_func=scoring, routed_scaling_factor=rsf)
    mod = peer.DeepseekV4HashRouter(cfg).double()
    if repeats:
        table = torch.randint(0, experts, (vocab, top_k))
    else:
        table = torch.stack([torch.randperm(experts)[:top_k] for _ in range(vocab)])
    with torch.no_grad():
        mod.weight.copy_(randn(experts, hidden, std=1.0 / hidden ** 0.5))
        mod.tid2eid = table.long()
    x = randn(B, S, hidden).requires_grad_(True)
    input_ids = torch.randint(0, vocab, (B, S))
    result = mod(x, input_ids)
    _router_case(out, name, mod, x, {"tid2eid": mod.tid2eid, "input_ids": input_ids}, result, scoring, rsf, top_k,
                 with_grad_logits)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", required=True, help="directory holding hf/deepseek_v4")
    parser.add_argument("--out", required=True, help="tests/golden: cases go to <out>/hc and <out>/router")
    args = parser.parse_args()
    peer, real = load_peer(args.peers)
    torch.set_grad_enabled(True)
    hc_dir, router_dir = os.path.join(args.out, "hc"), os.path.join(args.out, "router")
    os.makedirs(hc_dir, exist_ok=True)
    os.makedirs(router_dir, exist_ok=True)

    gen_hc_pre(peer, real, hc_dir, "hc_pre_b2_s3_h4_d5_it20", 2, 3, 4, 5, 20, seed=1)
    gen_hc_pre(peer, real, hc_dir, "hc_pre_b1_s5_h3_d7_it1", 1, 5, 3, 7, 1, seed=2)
    gen_hc_pre(peer, real, hc_dir, "hc_pre_b1_s2_h2_d3_it3_eps", 1, 2, 2, 3, 3, hc_eps=1e-2, rms_eps=1e-3, seed=3)
    gen_hc_pre(peer, real, hc_dir, "hc_pre_b3_s1_h1_d4_it5", 3, 1, 1, 4, 5, seed=4)
    gen_hc_pre(peer, real, hc_dir, "hc_pre_b1_s3_h4_d8_it50", 1, 3, 4, 8, 50, seed=5)
    gen_hc_post(peer, hc_dir, "hc_post_b2_s3_h4_d5", 2, 3, 4, 5, seed=6)
    gen_hc_post(peer, hc_dir, "hc_post_b1_s7_h3_d2", 1, 7, 3, 2, seed=7)
    gen_hc_post(peer, hc_dir, "hc_post_b1_s1_h1_d3", 1, 1, 1, 3, seed=8)
    gen_hc_head(peer, real, hc_dir, "hc_head_b2_s3_h4_d5", 2, 3, 4, 5, seed=9)
    gen_hc_head(peer, real, hc_dir, "hc_head_b1_s5_h3_d7_eps", 1, 5, 3, 7, hc_eps=1e-2, rms_eps=1e-3, seed=10)

    gen_router_topk(peer, real, router_dir, "topk_b2_s3_e8_k3", 2, 3, 6, 8, 3, seed=11)
    gen_router_topk(peer, real, router_dir, "topk_b1_s5_e7_k2_sigmoid", 1, 5, 5, 7, 2, scoring="sigmoid", rsf=2.5,
                    seed=12)
    gen_router_topk(peer, real, router_dir, "topk_b1_s4_e6_k6_large_logits", 1, 4, 4, 6, 6, x_std=12.0,
                    with_grad_logits=False, seed=13)
    gen_router_topk(peer, real, router_dir, "topk_b1_s1_e5_k1_bias", 1, 1, 3, 5, 1, bias_std=2.0, rsf=1.0, seed=14)
    gen_router_hash(peer, real, router_dir, "hash_b2_s3_e8_k3_v11", 2, 3, 6, 8, 3, 11, seed=15)
    gen_router_hash(peer, real, router_dir, "hash_b1_s5_e4_k3_v5_repeats", 1, 5, 4, 4, 3, 5, repeats=True,
                    with_grad_logits=False, seed=16)
    gen_router_hash(peer, real, router_dir, "hash_b1_s4_e6_k2_v9_sigmoid", 1, 4, 5, 6, 2, 9, scoring="sigmoid",
                    rsf=1.0, seed=17)
    print("wrote", len(os.listdir(hc_dir)), "hc and", len(os.listdir(router_dir)), "router cases")


if __name__ == "__main__":
    main()

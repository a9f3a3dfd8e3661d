"""Golden vectors for the dsa family from HF transformers `models/deepseek_v4` (5.17).

Usage: python3 tests/golden/gen_dsa.py --peers <dir with hf/deepseek_v4> --out tests/golden/dsa

Runs HF's own modules (DeepseekV4Attention with its CSA / HCA compressor, Lightning indexer,
eager sink attention, interleaved RoPE) in float64 on the CPU on tiny configs with random
weights, records the intermediates our ops take as inputs (the kv_proj / gate_proj outputs,
the indexer's q / keys / weights, the attention's q / kv / mask, the rope tables HF used) and
their outputs, and the gradients from torch autograd.

The peer file is loaded by path. With transformers installed (the device) its relative imports
resolve to the real transformers; without it (a CPU dry run with an old torch) they resolve to
small stubs defined here that carry only what the attention path touches, including the YaRN
frequency formula.

Float64 logic: HF upcasts with `.float()`, `.to(torch.float32)` and `softmax(dtype=torch.float32)`
so that bf16 runs compute in fp32; applied to float64 tensors those would *narrow* to fp32. While
HF runs here those calls keep float64 tensors in float64 (`keep_float64`), so the goldens are
HF's formulas in fp64. The RoPE tables are HF's own float32 values (computed in fp32 by design;
our ops take them as inputs and dsa_rope_cos_sin emulates the fp32 steps).
"""
import argparse
import contextlib
import importlib.util
import math
import os
import sys
import types

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_io import write_case  # noqa: E402

PKG = "transformers.models.deepseek_v4"


# ----------------------------------------------------------------------------------------------
# Stubs for a machine without transformers (dry runs only).

def _identity_decorator(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


class _StubConfig:
    """The attributes of DeepseekV4Config that the attention path reads."""

    def __init__(self, **kw):
        self.attention_dropout = 0.0
        self.__dict__.update(kw)
        self.qk_rope_head_dim = int(self.head_dim * self.partial_rotary_factor)
        self._attn_implementation = "eager"


def _stub_yarn(config, device=None, layer_type=None, **kwargs):
    # Independent transcription of the published YaRN schedule (Peng et al. 2023) in the
    # parameterisation of HF's `_compute_yarn_parameters`; used only without transformers.
    p = config.rope_parameters[layer_type]
    base, dim = p["rope_theta"], int(config.head_dim * p.get("partial_rotary_factor", 1.0))
    factor, orig = p["factor"], p["original_max_position_embeddings"]
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def corr(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(beta_fast), corr(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    extra, inter = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extra_factor = 1 - ramp
    return inter * (1 - extra_factor) + extra * extra_factor, attention_factor


def _install_stubs():
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        if name.count(".") == 0 or name in ("transformers.models", PKG, "transformers.utils"):
            m.__path__ = []
        sys.modules[name] = m
        return m

    class _Any:
        def __init__(self, *a, **k):
            pass

    class _Registry:
        def get_interface(self, name, default):
            return default

    mod("transformers")
    mod("transformers.models")
    mod(PKG)
    mod("transformers.initialization")
    mod("transformers.activations", ACT2FN={})
    mod("transformers.cache_utils", Cache=_Any, DynamicCache=_Any, DynamicSlidingWindowLayer=_Any)
    mod("transformers.generation", GenerationMixin=_Any)
    mod("transformers.integrations", use_experts_implementation=_identity_decorator,
        use_kernel_forward_from_hub=_identity_decorator)
    mod("transformers.masking_utils", create_sliding_window_causal_mask=None)
    mod("transformers.modeling_flash_attention_utils", FlashAttentionKwargs=dict)
    mod("transformers.modeling_layers", GradientCheckpointingLayer=nn.Module)
    mod("transformers.modeling_outputs", MoeCausalLMOutputWithPast=_Any, MoeModelOutputWithPast=_Any)
    mod("transformers.modeling_rope_utils", ROPE_INIT_FUNCTIONS={"yarn": _stub_yarn},
        dynamic_rope_update=_identity_decorator)
    mod("transformers.modeling_utils", ALL_ATTENTION_FUNCTIONS=_Registry(), PreTrainedModel=nn.Module)
    mod("transformers.processing_utils", Unpack=_UnpackStub())
    mod("transformers.utils", TransformersKwargs=dict, auto_docstring=_identity_decorator,
        can_return_tuple=_identity_decorator)
    mod("transformers.utils.deprecation", deprecate_kwarg=_identity_decorator)
    mod("transformers.utils.generic", maybe_autocast=lambda *a, **k: contextlib.nullcontext(),
        merge_with_config_defaults=_identity_decorator)
    mod("transformers.utils.output_capturing", OutputRecorder=_Any, capture_outputs=_identity_decorator)
    mod(PKG + ".configuration_deepseek_v4", DeepseekV4Config=_StubConfig)
    if not hasattr(nn, "Buffer"):  # torch < 2.5: a plain tensor attribute is enough here
        nn.Buffer = lambda data, persistent=True: data


class _UnpackStub:
    def __getitem__(self, item):
        return item


def load_peer(peers):
    folder = os.path.join(peers, "hf", "deepseek_v4")
    try:
        import transformers  # noqa: F401
        real = True
    except ImportError:
        real = False
        _install_stubs()
    if real:
        spec = importlib.util.spec_from_file_location(PKG + ".configuration_deepseek_v4",
                                                      os.path.join(folder, "configuration_deepseek_v4.py"))
        cfg = importlib.util.module_from_spec(spec)
        cfg.__package__ = PKG
        sys.modules[spec.name] = cfg
        spec.loader.exec_module(cfg)
    spec = importlib.util.spec_from_file_location(PKG + ".modeling_deepseek_v4",
                                                  os.path.join(folder, "modeling_deepseek_v4.py"))
    modeling = importlib.util.module_from_spec(spec)
    modeling.__package__ = PKG
    sys.modules[spec.name] = modeling
    spec.loader.exec_module(modeling)
    config_cls = sys.modules[PKG + ".configuration_deepseek_v4"].DeepseekV4Config
    return modeling, config_cls, real


# ----------------------------------------------------------------------------------------------
# Float64 logic while HF runs.

@contextlib.contextmanager
def keep_float64():
    orig_float, orig_to, orig_softmax = torch.Tensor.float, torch.Tensor.to, torch.Tensor.softmax

    def _float(self, *a, **k):
        return self if self.dtype == torch.float64 else orig_float(self, *a, **k)

    def _to(self, *a, **k):
        wants32 = (a and a[0] is torch.float32) or k.get("dtype") is torch.float32
        if self.dtype == torch.float64 and wants32:
            return self
        return orig_to(self, *a, **k)

    def _softmax(self, *a, **k):
        if self.dtype == torch.float64 and k.get("dtype") is torch.float32:
            k["dtype"] = torch.float64
        return orig_softmax(self, *a, **k)

    torch.Tensor.float, torch.Tensor.to, torch.Tensor.softmax = _float, _to, _softmax
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to, torch.Tensor.softmax = orig_float, orig_to, orig_softmax


# ----------------------------------------------------------------------------------------------

ROPE_MAIN_THETA, ROPE_COMPRESS_THETA = 10000.0, 160000.0
YARN = {"factor": 16.0, "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0}


def make_config(config_cls, real, layer_type, **over):
    kw = dict(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1,
              head_dim=16, q_lora_rank=12, partial_rotary_factor=0.5, rope_theta=ROPE_MAIN_THETA,
              compress_rope_theta=ROPE_COMPRESS_THETA,
              compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
              sliding_window=5, o_groups=2, o_lora_rank=8, index_n_heads=8, index_head_dim=8, index_topk=3,
              rms_norm_eps=1e-6, max_position_embeddings=1024, layer_types=[layer_type],
              rope_parameters={
                  "main": {"rope_type": "default", "rope_theta": ROPE_MAIN_THETA, "partial_rotary_factor": 0.5},
                  "compress": {"rope_type": "yarn", "rope_theta": ROPE_COMPRESS_THETA, "partial_rotary_factor": 0.5,
                               "attention_factor": 1.0, **YARN}})
    kw.update(over)
    config = config_cls(**kw)
    config._attn_implementation = "eager"
    return config


def randomize(module, gen):
    for name, p in module.named_parameters():
        with torch.no_grad():
            p.data = p.data.double()
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            elif p.dim() == 2 and "position_bias" not in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.7 * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def rope_table_params(kind):
    if kind == "main":
        return dict(theta=ROPE_MAIN_THETA, yarn=0.0)
    return dict(theta=ROPE_COMPRESS_THETA, yarn=1.0, **{k: float(v) for k, v in YARN.items()})


class Recorder:
    """Records module inputs / outputs (forward hooks) and rotary calls."""

    def __init__(self):
        self.io, self.rotary = {}, {}

    def hook(self, module, name):
        def fn(mod, inputs, output):
            self.io[name] = (inputs, output)
        module.register_forward_hook(fn)

    def rotary_of(self, module, name):
        orig = module.forward

        def fwd(x, position_ids, layer_type=None):
            cos, sin = orig(x, position_ids=position_ids, layer_type=layer_type)
            self.rotary.setdefault(name, []).append((position_ids.clone(), cos.detach().clone(), sin.detach().clone()))
            return cos, sin
        module.forward = fwd


def grads(output, inputs, grad_output):
    """torch.autograd.grad, with zeros where nothing flows (e.g. no complete window: HF returns new_zeros)."""
    live = [x for x in inputs if x.requires_grad]
    if not output.requires_grad or not live:
        return [torch.zeros_like(x) for x in inputs]
    got = dict(zip(map(id, live), torch.autograd.grad(output, live, grad_output, retain_graph=True, allow_unused=True)))
    return [torch.zeros_like(x) if got.get(id(x)) is None else got[id(x)] for x in inputs]


def table_from_calls(base_cos, base_sin, calls):
    """[S, R/2] tables: the arange(S) table with the rows HF actually used in `calls` written over."""
    cos, sin = base_cos.clone(), base_sin.clone()
    for positions, c, s in calls:
        cos[positions[0]] = c[0]
        sin[positions[0]] = s[0]
    return cos, sin


def sliding_mask(config, modeling, real, B, S, position_ids, dtype):
    """HF's eager sliding-window causal mask [B, 1, S, S] (0 / finfo.min)."""
    ours = torch.zeros(B, 1, S, S, dtype=dtype)
    i = torch.arange(S).view(-1, 1)
    j = torch.arange(S).view(1, -1)
    allowed = (j <= i) & (j > i - config.sliding_window)
    ours = ours.masked_fill(~allowed, torch.finfo(dtype).min)
    if real:
        from transformers.masking_utils import create_sliding_window_causal_mask
        embeds = torch.zeros(B, S, config.hidden_size, dtype=dtype)
        theirs = create_sliding_window_causal_mask(config=config, inputs_embeds=embeds, attention_mask=None,
                                                   past_key_values=None, position_ids=position_ids)
        if isinstance(theirs, torch.Tensor):
            assert theirs.shape[-2:] == (S, S), theirs.shape
            if theirs.dtype == torch.bool:
                theirs = torch.zeros(theirs.shape, dtype=dtype).masked_fill(~theirs, torch.finfo(dtype).min)
            assert torch.equal((theirs == 0).expand(B, 1, S, S), allowed.expand(B, 1, S, S)), "sliding mask differs"
            return theirs.to(dtype).expand(B, 1, S, S).contiguous()
    return ours


def mask_to_lists(mask):
    """[B, 1, S, N] additive mask -> [B, S, W] allowed columns (ascending), -1 padded."""
    allowed = mask[:, 0] > torch.finfo(mask.dtype).min / 2
    width = max(1, int(allowed.sum(-1).max()))
    out = torch.full(allowed.shape[:2] + (width,), -1, dtype=torch.int64)
    for b in range(allowed.shape[0]):
        for s in range(allowed.shape[1]):
            cols = torch.nonzero(allowed[b, s]).flatten()
            out[b, s, :len(cols)] = cols
    return out


def layer_case(modeling, config_cls, real, name, layer_type, B, S, seed, out_dir, **over):
    gen = torch.Generator().manual_seed(seed)
    config = make_config(config_cls, real, layer_type, **over)
    attn = modeling.DeepseekV4Attention(config, layer_idx=0).eval()
    randomize(attn, gen)
    rotary = modeling.DeepseekV4RotaryEmbedding(config)
    rec = Recorder()
    comp = attn.compressor
    if comp is not None:
        rec.hook(comp.kv_proj, "kv_proj")
        rec.hook(comp.gate_proj, "gate_proj")
        rec.hook(comp, "compressor")
        rec.rotary_of(comp.rotary_emb, "compressor")
        if layer_type == "compressed_sparse_attention":
            idx = comp.indexer
            for sub in ("kv_proj", "gate_proj", "q_b_proj"):
                rec.hook(getattr(idx, sub), "indexer." + sub)
            rec.hook(idx.scorer, "scorer")
            rec.hook(idx.scorer.weights_proj, "weights_proj")
            rec.hook(idx, "indexer")
            rec.rotary_of(idx.rotary_emb, "indexer")

    captured = {}
    orig_attention = modeling.eager_attention_forward

    def attention_recorder(module, query, key, value, attention_mask, scaling, **kw):
        out, weights = orig_attention(module, query, key, value, attention_mask, scaling, **kw)
        captured.update(query=query, kv=key, mask=attention_mask, out=out, scaling=scaling)
        return out, weights
    modeling.eager_attention_forward = attention_recorder

    hidden = torch.randn(B, S, config.hidden_size, generator=gen, dtype=torch.float64)
    position_ids = torch.arange(S).unsqueeze(0).expand(B, -1)
    try:
        with keep_float64():
            embeds = {k: rotary(hidden, position_ids=position_ids, layer_type=k) for k in ("main", "compress")}
            mask = sliding_mask(config, modeling, real, B, S, position_ids, torch.float64)
            attn(hidden, position_embeddings=embeds, position_ids=position_ids, attention_mask=mask,
                 past_key_values=None)
    finally:
        modeling.eager_attention_forward = orig_attention

    rope_kind = attn.rope_layer_type
    case = {"sliding_window": config.sliding_window, "num_heads": config.num_attention_heads,
            "scaling": captured["scaling"], "sinks": attn.sinks, "attn_q": captured["query"].transpose(1, 2),
            "attn_kv": captured["kv"][:, 0], "attn_out": captured["out"],
            "attn_lists": mask_to_lists(captured["mask"]), "compress_ratio": 0}
    # Backward of the attention (eager_attention_forward) w.r.t. q, kv (= key = value), sinks.
    g_out = torch.randn(captured["out"].shape, generator=gen, dtype=torch.float64)
    dq, dkv, dsinks = torch.autograd.grad(captured["out"], [captured["query"], captured["kv"], attn.sinks], g_out,
                                          retain_graph=True)
    case.update(attn_dout=g_out, attn_dq=dq.transpose(1, 2), attn_dkv=dkv[:, 0], attn_dsinks=dsinks)
    main_cos, main_sin = embeds[rope_kind]
    case.update(rope_kind=0 if rope_kind == "main" else 1, cos=main_cos[0], sin=main_sin[0])

    if comp is not None:
        ratio = comp.compress_rate
        kv_out, gate_out = rec.io["kv_proj"][1], rec.io["gate_proj"][1]
        compressed, _ = rec.io["compressor"][1]
        compressed = compressed[:, 0]
        ccos, csin = embeds["compress"]
        tcos, tsin = table_from_calls(ccos[0], csin[0], rec.rotary.get("compressor", []))
        g_c = torch.randn(compressed.shape, generator=gen, dtype=torch.float64)
        cgrads = grads(compressed, [kv_out, gate_out, comp.position_bias, comp.kv_norm.weight], g_c)
        case.update(compress_ratio=ratio, comp_kv=kv_out, comp_gate=gate_out, comp_position_bias=comp.position_bias,
                    comp_norm_weight=comp.kv_norm.weight, comp_cos=tcos, comp_sin=tsin, comp_out=compressed,
                    comp_dout=g_c, comp_dkv=cgrads[0], comp_dgate=cgrads[1], comp_dposition_bias=cgrads[2],
                    comp_dnorm_weight=cgrads[3], rms_norm_eps=config.rms_norm_eps)
    if layer_type == "compressed_sparse_attention":
        idx = comp.indexer
        ikv, igate = rec.io["indexer.kv_proj"][1], rec.io["indexer.gate_proj"][1]
        (q_scored, keys, _), scores = rec.io["scorer"]
        weights = rec.io["weights_proj"][1]
        topk = rec.io["indexer"][1]
        q_pre = rec.io["indexer.q_b_proj"][1].view(B, S, idx.num_heads, idx.head_dim)
        # HF calls it for the compressed keys (only when a window is complete), then for the queries.
        calls = rec.rotary["indexer"]
        key_calls, q_calls = calls[:-1], calls[-1:]
        kcos, ksin = table_from_calls(ccos[0], csin[0], key_calls)
        qcos, qsin = table_from_calls(ccos[0], csin[0], q_calls)
        g_keys = torch.randn(keys.shape, generator=gen, dtype=torch.float64)
        igrads = grads(keys, [ikv, igate, idx.position_bias, idx.kv_norm.weight], g_keys)
        # Indexer score backward on HF's selected (valid) entries.
        dsel = torch.randn(topk.shape, generator=gen, dtype=torch.float64) * (topk >= 0)
        dense = torch.zeros(scores.shape, dtype=torch.float64)
        dense.scatter_add_(-1, topk.clamp(min=0), dsel)
        sgrads = grads(scores, [q_scored, keys, weights], dense)
        case.update(idx_kv=ikv, idx_gate=igate, idx_position_bias=idx.position_bias, idx_norm_weight=idx.kv_norm.weight,
                    idx_key_cos=kcos, idx_key_sin=ksin, idx_keys=keys, idx_dkeys=g_keys, idx_dkv=igrads[0],
                    idx_dgate=igrads[1], idx_dposition_bias=igrads[2], idx_dnorm_weight=igrads[3],
                    idx_q_pre=q_pre, idx_q_cos=qcos, idx_q_sin=qsin, idx_q=q_scored, idx_weights=weights,
                    idx_scores=scores, idx_topk=topk, index_topk=config.index_topk, idx_dscores=dsel,
                    idx_dq=sgrads[0], idx_dk=sgrads[1], idx_dweights=sgrads[2],
                    softmax_scale=idx.scorer.softmax_scale, weights_scaling=idx.scorer.weights_scaling)
    for k, v in rope_table_params(rope_kind).items():
        case["rope_" + k] = v
    write_case(os.path.join(out_dir, name + ".smxg"), case)
    print(name, "ok")


def rope_case(modeling, config_cls, real, name, kind, positions, seed, out_dir, heads=3):
    gen = torch.Generator().manual_seed(seed)
    config = make_config(config_cls, real, "compressed_sparse_attention")
    rotary = modeling.DeepseekV4RotaryEmbedding(config)
    position_ids = torch.tensor(positions).unsqueeze(0)
    P = len(positions)
    x = torch.randn(1, heads, P, config.head_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    with keep_float64():
        cos, sin = rotary(x, position_ids=position_ids, layer_type=kind)
        out = modeling.apply_rotary_pos_emb(x, cos, sin)
        out_inv = modeling.apply_rotary_pos_emb(x, cos, -sin)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(out, [x], g)
    (dx_inv,) = torch.autograd.grad(out_inv, [x], g)
    inv_freq = getattr(rotary, kind + "_inv_freq")
    case = {"positions": position_ids[0], "x": x.transpose(1, 2)[0], "cos": cos[0], "sin": sin[0],
            "out": out.transpose(1, 2)[0], "out_inv": out_inv.transpose(1, 2)[0], "dout": g.transpose(1, 2)[0],
            "dx": dx.transpose(1, 2)[0], "dx_inv": dx_inv.transpose(1, 2)[0], "inv_freq": inv_freq,
            "rope_dim": config.qk_rope_head_dim,
            "attention_scaling": getattr(rotary, kind + "_attention_scaling")}
    for k, v in rope_table_params(kind).items():
        case["rope_" + k] = v
    write_case(os.path.join(out_dir, name + ".smxg"), case)
    print(name, "ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peers", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    modeling, config_cls, real = load_peer(args.peers)
    print("transformers:", "real" if real else "stubbed", "torch", torch.__version__)
    torch.manual_seed(0)
    rope_case(modeling, config_cls, real, "rope_main", "main", list(range(13)) + [100, 4095], 1, args.out)
    rope_case(modeling, config_cls, real, "rope_compress_yarn", "compress", list(range(9)) + [64, 1000, 3999], 2,
              args.out)
    layer_case(modeling, config_cls, real, "layer_sliding_s19", "sliding_attention", 1, 19, 10, args.out)
    layer_case(modeling, config_cls, real, "layer_csa_b2_s23", "compressed_sparse_attention", 2, 23, 11, args.out)
    layer_case(modeling, config_cls, real, "layer_csa_s41_topk5", "compressed_sparse_attention", 1, 41, 12, args.out,
               index_topk=5, sliding_window=7, index_n_heads=4)
    layer_case(modeling, config_cls, real, "layer_csa_s19_topk8", "compressed_sparse_attention", 1, 19, 15, args.out,
               index_topk=8)  # index_topk > T_c: HF narrows to T_c, we pad with -1
    layer_case(modeling, config_cls, real, "layer_csa_s3_no_windows", "compressed_sparse_attention", 1, 3, 16,
               args.out)
    layer_case(modeling, config_cls, real, "layer_hca_b2_s37_m8", "heavily_compressed_attention", 2, 37, 13, args.out,
               compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8})
    layer_case(modeling, config_cls, real, "layer_hca_s260_m128", "heavily_compressed_attention", 1, 260, 14,
               args.out, num_attention_heads=2, o_groups=1)


if __name__ == "__main__":
    main()

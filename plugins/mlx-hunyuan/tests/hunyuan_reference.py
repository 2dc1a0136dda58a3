"""An independent torch reference for Tencent's HunYuan format (model_type ``hunyuan``), which
transformers does not implement. Written from the semantics of Tencent's published modeling code
(``modeling_hunyuan.py`` of https://github.com/Tencent/Tencent-Hunyuan-Large and
https://huggingface.co/tencent/Hunyuan-A13B-Instruct), plainly and without caches:

* RoPE in the rotate-half layout; with ``rope_scaling = {"type": "dynamic", "alpha": a}`` the
  base is ``rope_theta * a ** (d / (d - 2))`` (``HunYuanDynamicNTKAlphaRotaryEmbedding``);
* attention: q/k/v projections, RoPE, then (``use_qk_norm``) RMSNorm per query/key head, causal
  softmax attention with grouped key/value heads;
* Cross-Layer Attention: a layer whose index is a multiple of ``cla_share_factor`` projects
  keys/values and hands the *raw projections* on; the following layers of its run have no
  ``k_proj``/``v_proj`` and apply RoPE and their own ``key_layernorm`` to those projections;
* MLP: ``num_experts == 1`` -> SwiGLU of width ``intermediate_size``; otherwise the router
  ``gate.wg`` (softmax in float32), the top-k experts, weighted by their probability (k = 1,
  ``top1gating``) or by their probabilities renormalised to sum to one (k > 1, ``topkgating``),
  plus, with ``use_mixed_mlp_moe``, a shared SwiGLU of width
  ``intermediate_size * num_shared_expert``. Expert capacity limits (a training device) are left
  out, as in inference engines.

Parameter names are those of Tencent's checkpoints, so ``state_dict()`` is a ``hunyuan``
checkpoint. ``renormalize_topk=False`` switches off the renormalisation -- the one place where
mlx-lm's ``hunyuan`` model departs from Tencent's code (see test_mlx_hunyuan.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_layer(value, layer: int):
    return value[layer] if isinstance(value, list) else value


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_base(config: dict, head_dim: int) -> float:
    base = config.get("rope_theta", 10000.0)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type") == "dynamic" and scaling.get("alpha"):
        base = base * scaling["alpha"] ** (head_dim / (head_dim - 2))
    return base


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, base: float):
    """``x``: (batch, heads, length, head_dim), positions 0 .. length - 1."""
    dim, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return x * emb.cos() + rotate_half(x) * emb.sin()


class Attention(nn.Module):
    def __init__(self, config: dict, layer: int):
        super().__init__()
        hidden = config["hidden_size"]
        self.n_heads = config["num_attention_heads"]
        self.n_kv = config.get("num_key_value_heads") or self.n_heads
        self.head_dim = hidden // self.n_heads
        self.cross = config.get("use_cla", False) and layer % config["cla_share_factor"] != 0
        bias = config.get("attention_bias", False)
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=bias)
        if not self.cross:
            self.k_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
            self.v_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=bias)
        self.use_qk_norm = config.get("use_qk_norm", False)
        if self.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config["rms_norm_eps"])
            self.key_layernorm = RMSNorm(self.head_dim, config["rms_norm_eps"])
        self.base = rope_base(config, self.head_dim)

    def forward(self, x, kv_states=None):
        batch, length, _ = x.shape
        q = self.q_proj(x)
        if self.cross:
            k, v = kv_states
        else:
            k, v = self.k_proj(x), self.v_proj(x)
        raw_kv = (k, v)
        q = q.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, self.base), apply_rope(k, self.base)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        groups = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1) @ v
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), raw_kv


class MLP(nn.Module):
    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    def __init__(self, hidden: int, num_experts: int):
        super().__init__()
        self.wg = nn.Linear(hidden, num_experts, bias=False)


class MoE(nn.Module):
    def __init__(self, config: dict, layer: int, renormalize_topk: bool):
        super().__init__()
        hidden = config["hidden_size"]
        self.num_experts = per_layer(config["num_experts"], layer)
        self.top_k = per_layer(config["moe_topk"], layer)
        width = per_layer(config.get("moe_intermediate_size"), layer) or config["intermediate_size"]
        self.renormalize = renormalize_topk and self.top_k > 1
        self.gate = Gate(hidden, self.num_experts)
        self.experts = nn.ModuleList(MLP(hidden, width) for _ in range(self.num_experts))
        if config.get("use_mixed_mlp_moe"):
            shared = config["intermediate_size"] * per_layer(config["num_shared_expert"], layer)
            self.shared_mlp = MLP(hidden, shared)

    def forward(self, x):
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate.wg(tokens.float()), dim=-1)
        top_p, top_e = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)
        for expert in range(self.num_experts):
            token_idx, slot = torch.where(top_e == expert)
            if len(token_idx):
                contribution = self.experts[expert](tokens[token_idx])
                out.index_add_(0, token_idx, contribution * top_p[token_idx, slot, None])
        out = out.reshape(shape)
        if hasattr(self, "shared_mlp"):
            out = out + self.shared_mlp(x)
        return out


class DecoderLayer(nn.Module):
    def __init__(self, config: dict, layer: int, renormalize_topk: bool):
        super().__init__()
        hidden, eps = config["hidden_size"], config["rms_norm_eps"]
        self.self_attn = Attention(config, layer)
        if per_layer(config.get("num_experts", 1), layer) > 1:
            self.mlp = MoE(config, layer, renormalize_topk)
        else:
            self.mlp = MLP(hidden, config["intermediate_size"])
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x, kv_states):
        attn, kv_states = self.self_attn(self.input_layernorm(x), kv_states)
        h = x + attn
        return h + self.mlp(self.post_attention_layernorm(h)), kv_states


class Backbone(nn.Module):
    def __init__(self, config: dict, renormalize_topk: bool):
        super().__init__()
        self.embed_tokens = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(config, i, renormalize_topk)
                                    for i in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(config["hidden_size"], config["rms_norm_eps"])


class HunYuanReference(nn.Module):
    def __init__(self, config: dict, renormalize_topk: bool = True):
        super().__init__()
        self.config = config
        self.model = Backbone(config, renormalize_topk)
        if not config.get("tie_word_embeddings", False):
            self.lm_head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        shared_kv = None
        use_cla, factor = self.config.get("use_cla", False), self.config.get("cla_share_factor", 1)
        for i, layer in enumerate(self.model.layers):
            h, kv = layer(h, shared_kv)
            if use_cla and i % factor == 0:
                shared_kv = kv  # the layers after it in its run reuse these projections
        h = self.model.norm(h)
        if hasattr(self, "lm_head"):
            return self.lm_head(h)
        return h @ self.model.embed_tokens.weight.T

    @torch.no_grad()
    def logits(self, ids):
        return self(torch.from_numpy(ids).long()).float().numpy()

"""Attention for kernels.function_policy_mode: its math path, every product routed.

torch computes F.scaled_dot_product_attention below Python (a fused kernel, or its math path in
C++), and hands F.multi_head_attention_forward to a function mode whole, so the mode would see
none of their GEMMs. It computes them here instead, from what it routes: the scores q @ k^T and
the weighted values p @ v as a GEMM per (batch, head) entry (FunctionPolicyMode._bmm), and the
multi-head projections as F.linear (FunctionPolicyMode._linear), laid out as torch's own
multi-head code lays them out (one packed projection for self-attention). Softmax, masks and
dropout stay torch's. The result equals torch's within float rounding; what these functions do
not cover (listed by `_attention_refusal` and `_multi_head_refusal`) runs natively, counted.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import operand_refusal


def _product(mode, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b per batch entry, routed (torch's bmm where the mode refuses it, counted there)."""
    out = mode._bmm(name, a, b)
    return torch.bmm(a, b) if out is None else out


def _linear(mode, name: str, x: torch.Tensor, w: torch.Tensor, bias) -> torch.Tensor:
    out = mode._linear(name, x, w, bias)
    return F.linear(x, w, bias) if out is None else out


def _attention_refusal(query, key, value, attn_mask, is_causal, enable_gqa) -> str | None:
    if enable_gqa:
        return "enable_gqa"
    if query.dim() < 2 or key.dim() != query.dim() or value.dim() != query.dim():
        return "shapes"
    if not query.shape[:-2] == key.shape[:-2] == value.shape[:-2] or key.shape[-2] != value.shape[-2] \
            or query.shape[-1] != key.shape[-1]:
        return "shapes (broadcast batch dimensions)"
    if is_causal and attn_mask is not None:
        return "is_causal with a mask"
    if attn_mask is not None and attn_mask.dtype not in (torch.bool, query.dtype):
        return f"a {attn_mask.dtype} mask on {query.dtype} inputs"
    return operand_refusal(query, key, value)


def scaled_dot_product_attention(mode, name, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """softmax(q @ k^T * scale + mask) @ v, with dropout on the weights; a row with nothing to
    attend to gives zeros, as torch's math path does. None if refused (counted)."""
    reason = _attention_refusal(query, key, value, attn_mask, is_causal, enable_gqa)
    if reason is not None:
        return mode._refused(name, reason)
    lead, length, sources = query.shape[:-2], query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    stacked = [t.reshape(math.prod(lead), *t.shape[-2:]) for t in (query, key, value)]
    scores = (_product(mode, name, stacked[0], stacked[1].transpose(1, 2)) * scale).view(*lead, length, sources)
    if is_causal:
        attn_mask = torch.ones(length, sources, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    elif attn_mask is not None:
        scores = scores + attn_mask
    weights = _softmax_or_zeros(scores) if attn_mask is not None else torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = _product(mode, name, weights.reshape(math.prod(lead), length, sources), stacked[2])
    return out.view(*lead, length, value.shape[-1])


def _softmax_or_zeros(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, zeros (and zero gradients) where every score is -inf."""
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    return torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def _multi_head_refusal(query, key, value, embed_dim, num_heads, bias_k, bias_v, add_zero_attn, key_padding_mask,
                        attn_mask, static_k, static_v, is_causal) -> str | None:
    if query.dim() != 3:
        return "unbatched input"
    if query.shape[-1] != embed_dim:
        return f"embed_dim {query.shape[-1]} against embed_dim_to_check {embed_dim}"
    if any(t is not None for t in (bias_k, bias_v, static_k, static_v)) or add_zero_attn:
        return "bias_k, bias_v, static keys or values, or add_zero_attn"
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        return "masks"
    if query.shape[-1] % num_heads:
        return "embed_dim not a multiple of num_heads"
    return operand_refusal(query, key, value)


def _projections(mode, name, query, key, value, weights, biases, packed: bool):
    """q, k, v projected as torch's multi-head code does: one GEMM for self-attention's packed weight."""
    if packed and query is key and key is value:
        projected = _linear(mode, name, query, weights, biases)
        return projected.unflatten(-1, (3, query.shape[-1])).unbind(-2)
    weights = weights.chunk(3) if packed else weights
    biases = (None,) * 3 if biases is None else biases.chunk(3)
    return [_linear(mode, name, x, w, b) for x, w, b in zip((query, key, value), weights, biases)]


def multi_head_attention_forward(mode, name, query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
                                 in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight,
                                 out_proj_bias, training=True, key_padding_mask=None, need_weights=True,
                                 attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
                                 k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None,
                                 average_attn_weights=True, is_causal=False):
    """F.multi_head_attention_forward on (L, N, E) inputs without masks or extra keys; None if
    refused (counted)."""
    reason = _multi_head_refusal(query, key, value, embed_dim_to_check, num_heads, bias_k, bias_v, add_zero_attn,
                                 key_padding_mask, attn_mask, static_k, static_v, is_causal)
    if reason is not None:
        return mode._refused(name, reason)
    length, batch, width = query.shape
    weights = (q_proj_weight, k_proj_weight, v_proj_weight) if use_separate_proj_weight else in_proj_weight
    q, k, v = _projections(mode, name, query, key, value, weights, in_proj_bias, not use_separate_proj_weight)
    head = width // num_heads
    q, k, v = (t.reshape(t.shape[0], batch * num_heads, head).transpose(0, 1) for t in (q, k, v))
    scores = _product(mode, name, q * math.sqrt(1.0 / head), k.transpose(1, 2))
    attention = torch.softmax(scores, dim=-1)
    if training and dropout_p > 0.0:
        attention = F.dropout(attention, p=dropout_p)
    out = _product(mode, name, attention, v).transpose(0, 1).reshape(length * batch, width)
    out = _linear(mode, name, out, out_proj_weight, out_proj_bias).view(length, batch, -1)
    if not need_weights:
        return out, None
    attention = attention.view(batch, num_heads, length, -1)
    return out, attention.mean(dim=1) if average_attn_weights else attention

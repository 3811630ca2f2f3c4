"""The frozen teacher of a distillation task: one pass gives its logits, last features and attention.

Features come from timm's ``forward_features`` (ViT: tokens after the final norm; ConvNeXt: the last
stage's map) and logits from ``forward_head`` on them, so the teacher runs once per batch.

The attention of a ViT's last block is recomputed from that block's own input through its ``qkv``
layer (timm's ``Attention`` with ``fused_attn`` calls scaled_dot_product_attention and never builds
the matrix): softmax(q k^T / sqrt(d)) with timm's q/k norms, the same numbers the block used.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Features(dict):
    """logits; ``map`` (B,C,h,w) or ``tokens`` (B,N,C patch tokens) + ``grid``; ``attn``, ``v`` for ViTs."""


def last_attention_module(net):
    """A timm ViT's last ``Attention`` module, or None for a network without one."""
    blocks = getattr(net, "blocks", None)
    if blocks is None or not len(blocks):
        return None
    attn = getattr(blocks[-1], "attn", None)
    return attn if attn is not None and hasattr(attn, "qkv") else None


def attention_from_input(attn_module, x):
    """(softmax(q k^T * scale) over every token, v) of a timm ``Attention`` for its input x (B,N,C)."""
    b, n, _ = x.shape
    qkv = attn_module.qkv(x).reshape(b, n, 3, attn_module.num_heads, attn_module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn_module.q_norm(q), attn_module.k_norm(k)
    return (q * attn_module.scale @ k.transpose(-2, -1)).softmax(dim=-1), q, k, v


def patch_attention(q, k, prefix):
    """The attention among patch tokens: softmax over patch keys of the patch queries' logits.

    Equal to the full attention's patch block renormalised per row (softmax applied once).
    """
    q, k = q[:, :, prefix:], k[:, :, prefix:]
    return (q @ k.transpose(-2, -1)).softmax(dim=-1)


class Teacher(nn.Module):
    """A frozen network, its normalisation and input size; ``forward(views)`` -> Features."""

    def __init__(self, net, norm, size=None, want_attention=False):
        super().__init__()
        self.net, self.norm = net, norm
        self.size = tuple(size) if size else None
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._attn = last_attention_module(net) if want_attention else None
        if want_attention and self._attn is None:
            raise ValueError("{}: the attention term needs a ViT teacher (timm blocks[-1].attn), this one has "
                             "none; use fmap or gl".format(type(net).__name__))
        self._seen = []
        if self._attn is not None:
            self._attn.register_forward_pre_hook(lambda module, args: self._seen.append(args[0]))

    def train(self, mode=True):
        super().train(mode)
        self.net.eval()  # frozen, BN statistics included
        return self

    def resize(self, views):
        if self.size and tuple(views.shape[-2:]) != self.size:
            return F.interpolate(views, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return views

    @torch.no_grad()
    def forward(self, views):
        self._seen.clear()
        feats = self.net.forward_features(self.norm(self.resize(views)))
        out = Features(logits=self.net.forward_head(feats))
        if feats.dim() == 4:  # a CNN's last stage: tokens are its positions
            out["map"], out["grid"] = feats, tuple(feats.shape[-2:])
            out["tokens"] = feats.flatten(2).transpose(1, 2)
        else:  # a ViT: its patch tokens after the final norm, on the patch grid
            prefix = getattr(self.net, "num_prefix_tokens", 0)
            out["tokens"], out["grid"] = feats[:, prefix:], tuple(self.net.patch_embed.grid_size)
            out["map"] = out["tokens"].transpose(1, 2).reshape(feats.shape[0], -1, *out["grid"])
        if self._attn is not None:
            x = self._seen[-1]
            self._seen.clear()
            _, q, k, v = attention_from_input(self._attn, x)
            prefix = getattr(self.net, "num_prefix_tokens", 0)
            out["q"], out["k"], out["v"] = q[:, :, prefix:], k[:, :, prefix:], v[:, :, prefix:]
            out["scale"] = self._attn.scale
            out["attn"] = patch_attention(q * self._attn.scale, k, prefix)
        return out

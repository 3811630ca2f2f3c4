"""MAE self-supervised pretraining of a timm Vision Transformer (He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners"), the ViT counterpart of ``training.pretrain``'s FCMAE.

Why MAE rather than DINO or SimCLR: it is the same masked-reconstruction family as FCMAE, so the ConvNeXtV2
and ViT teachers are pretrained comparably from the same images; it needs no momentum teacher, no negative
pairs and no large batches (contrastive methods lean on batch size, which 2 CPU cores or a clinic's one GPU
do not have); and the encoder runs on the visible quarter of the tokens only (the decoder, small, on all):
a step of ``vit_small_patch16_224`` at 224 px cost 0.37x a supervised step on all tokens, of ``vit_tiny`` 0.59x
(fastest of 6 steps, batch 8, one thread of the shared 2-core CPU under load 3: ``python benchmarks/pretrain_step.py
--threads 1``).

The encoder is the timm ViT itself (``patch_embed``, ``pos_embed``, ``cls_token``, ``blocks``, ``norm``), so
its state dict loads back into ``timm.create_model(name, num_classes=K)`` with only the head new: what
``retina-train teacher --init`` does. Per image, ``mask_ratio`` of the patch tokens are dropped at random
(75 % by default, the paper's); the visible ones, with their position embeddings and the class token, go
through the blocks; a light decoder (fixed 2-D sine-cosine positions, learned mask token, a few transformer
blocks) predicts every patch's pixels, and the loss is the MSE on per-patch-normalised pixels of the masked
patches only (the paper's ``norm_pix_loss``; ``training.pretrain.masked_loss``).
"""
import torch
from torch import nn

from training import engine

DEFAULT_MASK_RATIO = 0.75


def check_encoder(encoder):
    """A ValueError naming what does not fit: MAE here drops tokens from a plain class-token ViT."""
    name = type(encoder).__name__
    missing = [a for a in ("patch_embed", "pos_embed", "cls_token", "blocks", "norm") if getattr(encoder, a, None)
               is None]
    if missing:
        raise ValueError("{}: not a ViT with a class token that MAE can drop tokens from (no {})".format(
            name, ", ".join(missing)))
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    if prefix != 1 or getattr(encoder, "no_embed_class", False) or getattr(encoder, "reg_token", None) is not None:
        raise ValueError("{}: MAE here supports ViTs with one class token and position embeddings that "
                         "include it (this one has {} prefix token(s))".format(name, prefix))
    proj = getattr(encoder.patch_embed, "proj", None)
    if getattr(encoder.patch_embed, "backbone", None) is not None or not isinstance(proj, nn.Conv2d) or \
            tuple(proj.stride) != tuple(proj.kernel_size):
        raise ValueError("{}: its patch embedding sees beyond each patch (a hybrid CNN stem or overlapping "
                         "patches), so the visible tokens would carry the masked pixels".format(name))
    if getattr(encoder, "dynamic_img_size", False):
        raise ValueError("{}: a ViT with dynamic image size is not supported by MAE here".format(name))
    if encoder.pos_embed.shape[1] != 1 + encoder.patch_embed.num_patches:
        raise ValueError("{}: position embeddings for {} tokens, {} patches".format(
            name, encoder.pos_embed.shape[1], encoder.patch_embed.num_patches))


def sincos_2d(dim, grid):
    """1 x (1 + grid^2) x dim fixed sine-cosine positions (a zero row for the class token), as in MAE."""
    if dim % 4:
        raise ValueError("--decoder-dim must be a multiple of 4 for 2-D sine-cosine positions, got {}".format(dim))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    parts = []
    for pos in (xs.flatten(), ys.flatten()):
        angle = pos[:, None] * omega[None, :]
        parts += [torch.sin(angle), torch.cos(angle)]
    table = torch.cat(parts, dim=1).float()
    return torch.cat([torch.zeros(1, dim), table]).unsqueeze(0)


class MAE(nn.Module):
    def __init__(self, encoder, mean, std, decoder_dim=256, decoder_depth=2, decoder_heads=8,
                 mask_ratio=DEFAULT_MASK_RATIO):
        super().__init__()
        from timm.models.vision_transformer import Block
        check_encoder(encoder)
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.normalize = engine.Normalize(mean, std)
        self.patch = encoder.patch_embed.patch_size[0]
        self.grid = encoder.patch_embed.grid_size[0]
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos", sincos_2d(decoder_dim, self.grid), persistent=False)
        heads = max(1, min(decoder_heads, decoder_dim // 32))
        self.decoder = nn.Sequential(*[Block(decoder_dim, heads, mlp_ratio=4.0, qkv_bias=True)
                                       for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, x, mask):
        """x: N x 3 x H x W normalised; mask: N x L, 1 = dropped (the same count per image).
        Returns (N x (1 + kept) x D tokens after the encoder's norm, N x kept indices of the kept patches)."""
        enc = self.encoder
        tokens = enc.patch_embed(x) + enc.pos_embed[:, 1:]
        kept = int(mask.shape[1] - mask[0].sum().item())
        keep = torch.argsort(mask, dim=1, stable=True)[:, :kept]  # the visible patches, in order
        tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        tokens = getattr(enc, "norm_pre", nn.Identity())(tokens)
        return enc.norm(enc.blocks(tokens)), keep

    def decode(self, latent, keep):
        x = self.decoder_embed(latent)
        n, dim, patches = x.shape[0], x.shape[-1], self.grid * self.grid
        full = self.mask_token.to(x.dtype).expand(n, patches, dim).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos.to(x.dtype)
        x = self.decoder_norm(self.decoder(x))
        return self.pred(x[:, 1:])  # N x L x patch*patch*3, row-major like pretrain.patchify

    def forward(self, views, mask):
        """views: N x 3 x H x W in [0, 1]; mask: N x g x g (1 = masked). Returns (loss, pred, target)."""
        from training.pretrain import masked_loss, patchify
        x = self.normalize(views)
        flat = mask.flatten(1)
        latent, keep = self.encode(x, flat)
        pred = self.decode(latent, keep)
        target = patchify(x, self.patch)
        return masked_loss(pred, target, flat.to(pred.dtype)), pred, target


"""Forensic heads on tapped ViT feature grids (SPEC 3): image logit, per-patch evidence logits.

Layout: per tapped layer a channel LayerNorm and a 1x1 conv to `fuse_dim` (Qwen's ViT layers differ
by orders of magnitude in activation scale, so each layer is normalised before mixing), concat,
depthwise 3x3 (local context across neighbouring patches), 1x1 conv back to `fuse_dim`, norm, GELU.
The classifier pools the fused map with GeM (learnable exponent: between mean and max pooling,
useful because a forgery may cover a few patches only) and an MLP gives one logit. The evidence
head (3x3 conv, GELU, 1x1 conv) gives one logit per patch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ForensicHeads", "GeM", "ChannelLayerNorm"]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] map, independently per position."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GeM(nn.Module):
    """Generalised-mean pooling over H, W with a learnable exponent p (p=1 mean, p->inf max)."""

    def __init__(self, p_init: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if p_init < 1.0:
            raise ValueError(f"GeM p_init must be >= 1, got {p_init}")
        self.p = nn.Parameter(torch.tensor(float(p_init)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # p below 1 would make the pool a soft minimum; the clamp keeps it a mean-to-max interpolation.
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class ForensicHeads(nn.Module):
    """Fuse tapped ViT grids; return image logit, per-patch evidence logits and pooled features.

    Args:
        in_dims: channels of each tapped layer, in tap order (vision_config.hidden_size each).
        fuse_dim: channels of the fused map and of `pooled`.
        cls_hidden: hidden width of the classifier MLP.
        evi_hidden: channels of the evidence head's 3x3 conv.
        dropout: dropout inside the classifier MLP.
        gem_p: initial GeM exponent.
    """

    def __init__(
        self,
        in_dims: list[int],
        fuse_dim: int = 512,
        cls_hidden: int = 256,
        evi_hidden: int = 256,
        dropout: float = 0.1,
        gem_p: float = 3.0,
    ):
        super().__init__()
        in_dims = [int(d) for d in in_dims]
        if not in_dims or min(in_dims) < 1:
            raise ValueError(f"ForensicHeads needs one positive channel count per tapped layer, got {in_dims}")
        self.config = {
            "in_dims": in_dims,
            "fuse_dim": int(fuse_dim),
            "cls_hidden": int(cls_hidden),
            "evi_hidden": int(evi_hidden),
            "dropout": float(dropout),
            "gem_p": float(gem_p),
        }
        self.in_dims = in_dims
        self.fuse_dim = int(fuse_dim)
        self.layer_proj = nn.ModuleList(
            nn.Sequential(ChannelLayerNorm(dim), nn.Conv2d(dim, fuse_dim, kernel_size=1)) for dim in in_dims
        )
        concat_dim = fuse_dim * len(in_dims)
        self.fuse = nn.Sequential(
            nn.Conv2d(concat_dim, concat_dim, kernel_size=3, padding=1, groups=concat_dim),
            nn.Conv2d(concat_dim, fuse_dim, kernel_size=1),
            ChannelLayerNorm(fuse_dim),
            nn.GELU(),
        )
        self.pool = GeM(gem_p)
        self.classifier = nn.Sequential(
            nn.Linear(fuse_dim, cls_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(cls_hidden, 1),
        )
        self.evidence = nn.Sequential(
            nn.Conv2d(fuse_dim, evi_hidden, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(evi_hidden, 1, kernel_size=1),
        )

    @classmethod
    def from_vision_config(cls, vision_config, layers: list[int], fuse_dim: int = 512, **kwargs) -> "ForensicHeads":
        """Heads for the tapped `layers` of a Qwen2.5-VL vision tower described by `vision_config`."""
        depth = int(vision_config.depth)
        bad = [i for i in layers if not 0 <= int(i) < depth]
        if bad:
            raise ValueError(
                f"visual_layers {bad} out of range for a vision tower of {depth} blocks; "
                f"fix visual_layers in the config"
            )
        return cls([int(vision_config.hidden_size)] * len(layers), fuse_dim=fuse_dim, **kwargs)

    @classmethod
    def from_config(cls, config: dict) -> "ForensicHeads":
        """Rebuild from `heads.config` (as saved next to a checkpoint)."""
        return cls(**config)

    def _check(self, features: list[torch.Tensor]) -> None:
        if len(features) != len(self.in_dims):
            raise ValueError(
                f"ForensicHeads was built for {len(self.in_dims)} tapped layers, got {len(features)} feature maps; "
                f"visual_layers must match the heads checkpoint"
            )
        shape = None
        for k, (x, dim) in enumerate(zip(features, self.in_dims)):
            if x.dim() != 4 or x.shape[1] != dim:
                raise ValueError(f"feature map {k} must be [B, {dim}, H, W], got {tuple(x.shape)}")
            here = (x.shape[0], x.shape[2], x.shape[3])
            if shape is not None and here != shape:
                raise ValueError(f"feature maps disagree on batch/grid: {shape} vs {here} (map {k})")
            shape = here

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """features: per tapped layer [B, C_l, H, W] -> cls_logit [B], heatmap_logit [B, H, W], pooled [B, D]."""
        self._check(features)
        dtype = self.fuse[1].weight.dtype
        projected = [proj(x.to(dtype)) for proj, x in zip(self.layer_proj, features)]
        fused = self.fuse(torch.cat(projected, dim=1))
        pooled = self.pool(fused)
        return {
            "cls_logit": self.classifier(pooled).squeeze(-1),
            "heatmap_logit": self.evidence(fused).squeeze(1),
            "pooled": pooled,
        }

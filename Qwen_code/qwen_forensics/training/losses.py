"""Joint loss of the forensic heads (SPEC 3).

    total = lambda_cls * BCE(cls_logit, label)
          + lambda_evi * (evi_alpha * BCE(heatmap, target) + (1 - evi_alpha) * Dice(heatmap, target))
          + lambda_sparse * mean(sigmoid(heatmap))
          + lambda_contrast * (mean heatmap prob on reals - mean heatmap prob on fakes)

Target: the binarised mask at image resolution is area-averaged onto the heatmap's patch grid, so
each cell's soft target is the fraction of that patch the manipulation covers (BCE accepts soft
targets; the same soft target enters Dice).

Choices:
- Evidence BCE averages over every cell of every image: reals (all-zero target) teach "no evidence".
- Dice is a per-image soft Dice averaged over the images whose target is non-empty (fakes with a
  mask). On an empty target Dice is 1 for any non-zero prediction and its gradient only pushes the
  sum of probabilities down, which BCE already does; so reals, and fakes whose mask binarised to
  nothing, are left out of Dice. A batch without such images has Dice 0.
- The contrast term needs both classes; with only reals or only fakes in the batch it is 0.
- Defaults: lambda_cls = lambda_evi = 1, evi_alpha = 0.5, and the two regularisers off
  (lambda_sparse = lambda_contrast = 0): both push against localisation (sparse lowers every cell,
  contrast raises every cell of a fake), so they are opt-in via the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from qwen_forensics.data.collate import IGNORE_INDEX, lm_logits_to_keep

__all__ = ["ForensicLossWeights", "forensic_loss", "mask_to_grid", "soft_dice"]


@dataclass
class ForensicLossWeights:
    lambda_cls: float = 1.0
    lambda_evi: float = 1.0
    lambda_sparse: float = 0.0
    lambda_contrast: float = 0.0
    evi_alpha: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.evi_alpha <= 1.0:
            raise ValueError(f"evi_alpha must lie in [0, 1], got {self.evi_alpha}; fix evi_alpha in the config")
        for name in ("lambda_cls", "lambda_evi", "lambda_sparse", "lambda_contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}; fix {name} in the config")


def mask_to_grid(mask: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """[B, S_h, S_w] mask in [0, 1] -> [B, H, W]: fraction of each patch covered (exact area mean)."""
    if mask.dim() != 3:
        raise ValueError(f"target mask must be [B, H, W] at image resolution, got shape {tuple(mask.shape)}")
    h, w = grid_hw
    if mask.shape[1] % h or mask.shape[2] % w:
        raise ValueError(
            f"mask size {tuple(mask.shape[1:])} is not a multiple of the heatmap grid {(h, w)}: "
            f"image_size must be a multiple of patch_size"
        )
    return F.avg_pool2d(mask.unsqueeze(1).float(), kernel_size=(mask.shape[1] // h, mask.shape[2] // w)).squeeze(1)


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-image soft Dice loss 1 - (2 sum pt + eps) / (sum p + sum t + eps), shape [B]."""
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dims)
    return 1.0 - (2.0 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)


def forensic_loss(
    cls_logit: torch.Tensor,
    heatmap_logit: torch.Tensor,
    target_mask: torch.Tensor,
    labels: torch.Tensor,
    weights: ForensicLossWeights,
) -> dict[str, torch.Tensor]:
    """Loss terms and weighted `total` for one batch.

    cls_logit [B], heatmap_logit [B, H, W], target_mask [B, S, S] in [0, 1] at image resolution,
    labels [B] (1 = fake). Returns unweighted terms `cls`, `evi_bce`, `evi_dice`, `evi`, `sparse`,
    `contrast` and the weighted `total` (scalars).
    """
    batch = cls_logit.shape[0]
    if cls_logit.shape != (batch,) or heatmap_logit.dim() != 3 or heatmap_logit.shape[0] != batch:
        raise ValueError(
            f"expected cls_logit [B] and heatmap_logit [B, H, W], got {tuple(cls_logit.shape)} and "
            f"{tuple(heatmap_logit.shape)}"
        )
    if labels.shape != (batch,) or target_mask.shape[0] != batch:
        raise ValueError(
            f"labels {tuple(labels.shape)} / target_mask {tuple(target_mask.shape)} do not match batch {batch}"
        )
    cls_logit = cls_logit.float()
    heatmap_logit = heatmap_logit.float()
    labels = labels.to(device=cls_logit.device, dtype=torch.float32)
    target = mask_to_grid(target_mask.to(heatmap_logit.device), tuple(heatmap_logit.shape[1:]))

    loss_cls = F.binary_cross_entropy_with_logits(cls_logit, labels)
    evi_bce = F.binary_cross_entropy_with_logits(heatmap_logit, target)
    prob = torch.sigmoid(heatmap_logit)
    zero = heatmap_logit.sum() * 0.0
    # Group means by 0/1 weights and torch.where instead of boolean indexing and `if tensor.any()`:
    # those read values back to the host, a sync that stalls every training step on the GPU.
    # Weighting by 0 is exact: with eps = 1 the Dice of an empty-target row is finite.
    has_target = (target.flatten(1).sum(1) > 0).float()
    n_target = has_target.sum()
    dice_mean = (soft_dice(prob, target) * has_target).sum() / n_target.clamp(min=1.0)
    evi_dice = torch.where(n_target > 0, dice_mean, zero)
    evi = weights.evi_alpha * evi_bce + (1.0 - weights.evi_alpha) * evi_dice
    sparse = prob.mean()
    per_image = prob.flatten(1).mean(1)
    fake = (labels > 0.5).float()
    n_fake, n_real = fake.sum(), (1.0 - fake).sum()
    real_mean = (per_image * (1.0 - fake)).sum() / n_real.clamp(min=1.0)
    fake_mean = (per_image * fake).sum() / n_fake.clamp(min=1.0)
    contrast = torch.where((n_fake > 0) & (n_real > 0), real_mean - fake_mean, zero)
    total = (
        weights.lambda_cls * loss_cls
        + weights.lambda_evi * evi
        + weights.lambda_sparse * sparse
        + weights.lambda_contrast * contrast
    )
    return {
        "cls": loss_cls,
        "evi_bce": evi_bce,
        "evi_dice": evi_dice,
        "evi": evi,
        "sparse": sparse,
        "contrast": contrast,
        "total": total,
    }


@dataclass
class HybridLossWeights:
    lm: float = 1.0
    head: ForensicLossWeights = field(default_factory=ForensicLossWeights)

    @classmethod
    def from_config(cls, cfg) -> "HybridLossWeights":
        w = cfg.loss_weights
        if w.lm < 0:
            raise ValueError(f"loss_weights.lm must be >= 0, got {w.lm}; fix loss_weights in the config")
        return cls(w.lm, ForensicLossWeights(w.head_cls, w.head_evi, w.head_sparse, w.head_contrast, cfg.evi_alpha))


def answer_lm_loss(logits: torch.Tensor, labels: torch.Tensor, needed: int | None = None) -> torch.Tensor:
    """Mean next-token cross entropy over the supervised tokens; ``logits`` are the last k positions.

    ``needed``: the :func:`lm_logits_to_keep` of ``labels`` when the caller has it on the host (the
    training collator computes it); the coverage check then needs no look at the labels on the GPU."""
    keep = logits.shape[1]
    # The logits at position p predict token p + 1: the first kept position predicts nothing kept.
    if needed is not None:
        uncovered = keep < needed
    else:
        uncovered = bool((labels[:, : labels.shape[1] - keep + 1] != IGNORE_INDEX).any())
    if uncovered:
        raise ValueError(f"the logits of the last {keep} positions cannot predict every supervised token; "
                         "keep lm_logits_to_keep(labels) positions")
    kept = labels[:, -keep:]
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), kept[:, 1:].flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX)


def hybrid_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor],
                weights: HybridLossWeights) -> dict[str, torch.Tensor]:
    """Task 3's joint loss of a forward ``out`` (the hybrid model on ``hybrid_inputs(batch)`` with
    ``logits_to_keep=batch["logits_to_keep"]``): ``total`` = lm weight * LM answer loss + the weighted
    head loss. Returns ``total``, ``lm``, ``head`` (weighted head total) and the head's unweighted terms.
    """
    labels = batch["labels"]
    keep = batch["logits_to_keep"] if "logits_to_keep" in batch else lm_logits_to_keep(labels)
    lm = answer_lm_loss(out["logits"], labels, needed=keep)
    head = forensic_loss(out["cls_logit"].float(), out["heatmap_logit"].float(), batch["mask"], batch["target"],
                         weights.head)
    return {"total": weights.lm * lm + head["total"], "lm": lm, "head": head["total"],
            **{k: head[k] for k in ("cls", "evi", "sparse", "contrast")}}

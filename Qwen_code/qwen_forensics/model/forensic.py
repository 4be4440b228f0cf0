"""Task 1's trainable model: the (LoRA'd) vision tower, the feature tap and the forensic heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.model.tap import ViTFeatureTap


class ForensicViT(nn.Module):
    """pixel_values -> {cls_logit [B], heatmap_logit [B, H, W], pooled [B, D]}.

    The tower runs as usual; the tap collects the outputs of ``layers`` in patch order, and the
    heads read them. The same object works on the bare tower (Task 1 training: the LM is never
    loaded) and on ``model.model.visual`` inside the full model (Task 3).
    """

    def __init__(self, visual: nn.Module, layers: list[int], heads: ForensicHeads):
        super().__init__()
        self.visual = visual
        self.heads = heads
        self.layers = list(layers)
        self.tap = ViTFeatureTap(visual, self.layers)

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | Sequence[Sequence[int]]
                ) -> dict[str, torch.Tensor]:
        """``image_grid_thw``: a tensor, or (t, h, w) ints (``collate.vision_grid``). A grid on the host
        is looked up without a device sync by the tower's fast-path inputs; a tower without them
        gets it on the device, as transformers expects."""
        if not isinstance(image_grid_thw, torch.Tensor):
            image_grid_thw = torch.tensor(image_grid_thw, dtype=torch.long)
        if image_grid_thw.device != pixel_values.device and not getattr(self.tap.tower, "_fast_inputs", False):
            image_grid_thw = image_grid_thw.to(pixel_values.device)
        self.visual(pixel_values, grid_thw=image_grid_thw)
        return self.heads(self.tap.stacked())

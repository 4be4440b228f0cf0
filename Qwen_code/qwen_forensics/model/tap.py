"""Spatially faithful feature grids from Qwen2.5-VL vision blocks (SPEC 6.1).

The vision tower does not run its blocks in image order. The processor flattens each image's
patches in 2x2 merge units (row-major over units, then row-major inside a unit), and the tower
then permutes whole merge units into window order (`window_index`) so that each attention window
is a contiguous run of the sequence. A block output reshaped straight to (H, W) is therefore
scrambled. The tap undoes both permutations per image, with a single differentiable gather, so
that cell (i, j) of a grid is patch (i, j) of the image, also for batches that mix image sizes.

The window order is recomputed here from `grid_thw` and the vision config instead of calling
transformers' helpers, whose names and locations move between releases.
"""

from __future__ import annotations

import torch
from torch import nn

from qwen_forensics.model.loader import unwrap_peft

__all__ = ["ViTFeatureTap", "compute_window_index", "patch_order"]


def _as_int(value, name: str) -> int:
    """Vision configs may store sizes as a pair; the tap needs square patches and windows."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"vision config {name}={value!r} is not square; the tap supports square sizes only")
        value = value[0]
    return int(value)


def _grid_list(grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
    if not isinstance(grid_thw, torch.Tensor) or grid_thw.dim() != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"grid_thw must be an integer tensor of shape [num_images, 3], got {grid_thw!r}")
    return [(int(t), int(h), int(w)) for t, h, w in grid_thw.tolist()]


def compute_window_index(
    grid_thw: torch.Tensor, spatial_merge_size: int, window_size: int, patch_size: int
) -> torch.Tensor:
    """Merge-unit permutation the tower applies before its blocks.

    Returns a long tensor `window_index` over all merge units of the batch (images concatenated in
    order): position k of the block sequence holds merge unit `window_index[k]` (processor order).
    Windows are `window_size // patch_size // spatial_merge_size` merge units per side, aligned at
    each image's origin, cut short at its bottom and right edges, visited row-major per image.
    """
    merge = _as_int(spatial_merge_size, "spatial_merge_size")
    units_per_window = _as_int(window_size, "window_size") // merge // _as_int(patch_size, "patch_size")
    if units_per_window < 1:
        raise ValueError(
            f"window_size={window_size} is smaller than one merge unit "
            f"({merge} x patch_size={patch_size} pixels); check the vision config"
        )
    pieces = []
    offset = 0
    for t, h, w in _grid_list(grid_thw):
        if h % merge or w % merge:
            raise ValueError(f"grid {h}x{w} is not divisible by spatial_merge_size={merge}")
        units_h, units_w = h // merge, w // merge
        windows_h = -(-units_h // units_per_window)
        windows_w = -(-units_w // units_per_window)
        index = torch.arange(t * units_h * units_w).reshape(t, units_h, units_w)
        padded = torch.full((t, windows_h * units_per_window, windows_w * units_per_window), -1, dtype=torch.long)
        padded[:, :units_h, :units_w] = index
        padded = padded.reshape(t, windows_h, units_per_window, windows_w, units_per_window)
        padded = padded.permute(0, 1, 3, 2, 4).reshape(-1)
        pieces.append(padded[padded >= 0] + offset)
        offset += t * units_h * units_w
    return torch.cat(pieces)


def patch_order(grid_thw: torch.Tensor, spatial_merge_size: int, window_size: int, patch_size: int) -> torch.Tensor:
    """Gather index from block-sequence order to per-image row-major patch order.

    `block_output[patch_order(...)]` lists image 0's patches row by row, then image 1's, and so on.
    Only single-frame inputs (images) have a 2-D patch grid; videos are rejected.
    """
    grids = _grid_list(grid_thw)
    for t, h, w in grids:
        if t != 1:
            raise ValueError(f"the feature tap handles images only (grid_t == 1), got grid_thw row {(t, h, w)}")
    merge = _as_int(spatial_merge_size, "spatial_merge_size")
    unit = merge * merge
    window_index = compute_window_index(grid_thw, merge, window_size, patch_size)
    position_of_unit = torch.empty_like(window_index)
    position_of_unit[window_index] = torch.arange(window_index.numel())
    orders = []
    unit_offset = 0
    for _, h, w in grids:
        rows = torch.arange(h).view(h, 1)
        cols = torch.arange(w).view(1, w)
        unit_id = unit_offset + (rows // merge) * (w // merge) + cols // merge
        inside = (rows % merge) * merge + cols % merge
        orders.append((position_of_unit[unit_id] * unit + inside).reshape(-1))
        unit_offset += (h // merge) * (w // merge)
    return torch.cat(orders)


def _unwrap_tower(visual: nn.Module) -> nn.Module:
    """PEFT wrappers forward attributes but hooks must sit on the modules that actually run."""
    visual = unwrap_peft(visual)
    blocks = getattr(visual, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or getattr(visual, "config", None) is None:
        raise TypeError(
            f"ViTFeatureTap needs the Qwen2.5-VL vision tower (a module with .blocks and .config, e.g. "
            f"model.model.visual), got {type(visual).__name__}"
        )
    return visual


class ViTFeatureTap:
    """Forward hooks that expose the outputs of chosen vision blocks as per-image patch grids.

    Run the vision tower (or the full model) as usual, then read `grids()` or `stacked()`. The
    captured tensors keep autograd, are replaced at every forward of the tower, and are released by
    `clear()` or `remove()`. Works on a PEFT-wrapped tower and under gradient checkpointing with
    `use_reentrant=False`; reentrant checkpointing that hides block outputs from autograd raises.
    """

    def __init__(self, visual: nn.Module, layers: list[int]):
        self.tower = _unwrap_tower(visual)
        depth = len(self.tower.blocks)
        layers = [int(i) for i in layers]
        if not layers:
            raise ValueError("ViTFeatureTap needs at least one layer index (config key visual_layers)")
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(
                f"visual_layers {bad} out of range: the vision tower has {depth} blocks (valid 0..{depth - 1}); "
                f"fix visual_layers in the config"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"visual_layers {layers} lists a block twice; list each block once")
        self.layers = layers
        config = self.tower.config
        self._merge = _as_int(config.spatial_merge_size, "spatial_merge_size")
        self._window = _as_int(config.window_size, "window_size")
        self._patch = _as_int(config.patch_size, "patch_size")
        self._outputs: dict[int, torch.Tensor] = {}
        self._grid_thw: torch.Tensor | None = None
        self._order: torch.Tensor | None = None
        # Patch orders by (grids, device): a training run sees one or two batch shapes, so the
        # per-image index building runs once per shape, not at every forward.
        self._orders: dict[tuple, torch.Tensor] = {}
        self._active = False
        self._grad_at_entry = False
        self._handles = [
            self.tower.register_forward_pre_hook(self._on_tower_start, with_kwargs=True),
            self.tower.register_forward_hook(self._on_tower_end),
        ]
        for layer in layers:
            self._handles.append(self.tower.blocks[layer].register_forward_hook(self._block_hook(layer)))

    def _on_tower_start(self, module, args, kwargs):
        grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid_thw is None:
            raise ValueError("ViTFeatureTap: the vision tower was called without grid_thw; pass grid_thw=...")
        self.clear()
        self._grid_thw = grid_thw.detach()
        self._active = True
        self._grad_at_entry = torch.is_grad_enabled()

    def _on_tower_end(self, module, args, output):
        self._active = False
        missing = [i for i in self.layers if i not in self._outputs]
        if missing:
            raise RuntimeError(f"ViTFeatureTap: blocks {missing} did not run during the vision forward")

    def _block_hook(self, layer: int):
        def hook(module, args, output):
            # Gradient-checkpoint replays during backward run outside the tower's forward, and must
            # not overwrite the tensors that carry the graph.
            if not self._active:
                return
            if self._grad_at_entry and not torch.is_grad_enabled():
                raise RuntimeError(
                    "ViTFeatureTap: block outputs are computed without autograd inside the tower's forward, "
                    "which is what reentrant gradient checkpointing does; enable it with "
                    "gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
                )
            hidden = output[0] if isinstance(output, tuple) else output
            self._outputs[layer] = hidden

        return hook

    @property
    def grid_thw(self) -> torch.Tensor:
        """`grid_thw` of the last captured forward."""
        self._require_capture()
        return self._grid_thw

    def _require_capture(self):
        if self._grid_thw is None or len(self._outputs) != len(self.layers):
            raise RuntimeError(
                "ViTFeatureTap holds no features: run a forward of the vision tower (or of the full model with "
                "images) after attaching the tap and before reading it"
            )

    def _ordered(self, layer: int) -> torch.Tensor:
        hidden = self._outputs[layer]
        if self._order is None or self._order.device != hidden.device:
            key = (tuple(_grid_list(self._grid_thw)), hidden.device)
            if key not in self._orders:
                if len(self._orders) >= 64:
                    self._orders.clear()
                order = patch_order(self._grid_thw, self._merge, self._window, self._patch)
                self._orders[key] = order.to(hidden.device)
            self._order = self._orders[key]
        if self._order.numel() != hidden.shape[0]:
            raise RuntimeError(
                f"ViTFeatureTap: block {layer} output has {hidden.shape[0]} tokens but grid_thw "
                f"{self._grid_thw.tolist()} implies {self._order.numel()}"
            )
        return hidden.index_select(0, self._order)

    def grids(self) -> list[list[torch.Tensor]]:
        """Per tapped layer (in `layers` order), per image: a [C, H, W] grid, cell (i, j) = patch (i, j)."""
        self._require_capture()
        sizes = [(h, w) for _, h, w in _grid_list(self._grid_thw)]
        result = []
        for layer in self.layers:
            ordered = self._ordered(layer)
            per_image = ordered.split([h * w for h, w in sizes])
            result.append([x.reshape(h, w, -1).permute(2, 0, 1) for x, (h, w) in zip(per_image, sizes)])
        return result

    def stacked(self) -> list[torch.Tensor]:
        """Per tapped layer: [B, C, H, W]; all images must share one patch grid (letterboxed input)."""
        self._require_capture()
        sizes = {(h, w) for _, h, w in _grid_list(self._grid_thw)}
        if len(sizes) != 1:
            raise ValueError(
                f"ViTFeatureTap.stacked(): the batch mixes patch grids {sorted(sizes)}; letterbox the images to "
                f"one size or use grids()"
            )
        (h, w), batch = sizes.pop(), self._grid_thw.shape[0]
        return [self._ordered(layer).reshape(batch, h, w, -1).permute(0, 3, 1, 2) for layer in self.layers]

    def clear(self):
        """Drop captured tensors (and the graph they hold)."""
        self._outputs = {}
        self._grid_thw = None
        self._order = None
        self._active = False

    def remove(self):
        """Detach every hook and drop captured tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

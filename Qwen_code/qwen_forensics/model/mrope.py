"""Qwen2.5-VL's mRoPE position ids computed on the host, by the collator (DataLoader workers, CPU tensors).

When a forward gets no ``position_ids``, ``Qwen2_5_VLModel.forward`` builds them with
``get_rope_index``, which walks the batch row by row with ``.tolist()``/``.item()``: on the GPU about
nine host syncs per row (590 for a batch of 64 on the 7B model). Given ``position_ids`` it skips that
computation and hands them to the text decoder unchanged (transformers 5.17 and 5.24 alike).

The positions are made by transformers' own ``Qwen2_5_VLModel.get_rope_index``, run on the CPU batch:
in both supported versions it reads nothing of the model but ``config.vision_config.spatial_merge_size``
(and ``tokens_per_second``, for videos only) and calls ``get_vision_position_ids``, which uses no state,
so a stand-in holding those values runs the real code. The result is the model's own layout,
[3, B, L] int64 (temporal, height, width; padded slots 0), the one its forward passes on without
packed text positions ([4, B, L] is what ``generate`` builds). Images only: a video makes it fail.

``generate`` must not get these positions (it extends them itself and keeps ``rope_deltas`` for the
decoding steps only when it built them): see ``data.collate.generate_inputs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

POSITION_KEY = "position_ids"
_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")


class _RopeIndex:
    """Just enough of a ``Qwen2_5_VLModel`` for its ``get_rope_index``: the config values it reads and
    the stateless helper it calls. A release that reads more of the model fails here loudly."""

    get_rope_index = Qwen2_5_VLModel.get_rope_index
    get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids

    def __init__(self, spatial_merge_size: int) -> None:
        # tokens_per_second only spaces video frames; None makes a video fail instead of being given made-up positions.
        self.config = SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=spatial_merge_size,
                                                                    tokens_per_second=None))


def host_position_ids(batch: Mapping[str, torch.Tensor], spatial_merge_size: int) -> torch.Tensor:
    """[3, B, L] int64 mRoPE positions of a processor batch with images (CPU tensors), exactly what the
    model's forward computes for it; ``spatial_merge_size`` is ``processor.image_processor.merge_size``."""
    if batch.get("video_grid_thw") is not None or batch.get("pixel_values_videos") is not None:
        raise ValueError("host_position_ids handles image batches only (videos need tokens_per_second)")
    missing = [key for key in _INPUTS if key not in batch]
    if missing:
        raise KeyError(f"host mRoPE positions need {list(_INPUTS)}; the batch lacks {missing}")
    on_device = [key for key in _INPUTS if batch[key].device.type != "cpu"]
    if on_device:
        raise ValueError(f"{on_device} are not on the CPU: host positions are for the collator, before the batch "
                         "moves to the device (on the device each row costs host syncs)")
    positions, _ = _RopeIndex(int(spatial_merge_size)).get_rope_index(
        batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"])
    return positions

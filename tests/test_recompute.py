"""Task 1's step without device syncs or spare memory: the patch grid handed over from the host, and
frozen ViT blocks recomputed in the backward, each equal to the plain path; and the warm-up before
timed loops, which leaves the run as it would be without it."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from peft import inject_adapter_in_model
from PIL import Image
from torch.utils.data import DataLoader
from transformers import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from qwen_forensics.data.collate import GRID_HOST_KEY, ImageBatchCollator, vision_grid
from qwen_forensics.demo.tiny import TEXT_DIMS, VISION_DIMS
from qwen_forensics.evaluation.predictions import SplitEvaluator
from qwen_forensics.model.fast import enable_fast_paths
from qwen_forensics.model.forensic import ForensicViT
from qwen_forensics.model.heads import ForensicHeads
from qwen_forensics.model.lora import make_lora_config
from qwen_forensics.model.lora_targets import vision_block_targets
from qwen_forensics.training.loop import warm_up
from qwen_forensics.training.losses import ForensicLossWeights, forensic_loss
from qwen_forensics.training.recompute import recompute_frozen_blocks
from qwen_forensics.training.runtime import FirstBatch

LORA_LAYERS = [3, 9]
TAPPED = [9, 20]


def _batch(n=2, size=112):
    rng = np.random.default_rng(1)
    items = [{"image": Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)), "position": i,
              "label": i % 2, "mask": torch.from_numpy((rng.random((size, size)) > 0.7).astype(np.float32) * (i % 2))}
             for i in range(n)]
    processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=size * size)
    return ImageBatchCollator(processor)(items)


def _model(seed=0):
    torch.manual_seed(seed)
    config = Qwen2_5_VLVisionConfig(**VISION_DIMS, out_hidden_size=TEXT_DIMS["hidden_size"])
    config._attn_implementation = "sdpa"
    tower = Qwen2_5_VisionTransformerPretrainedModel(config)
    tower.requires_grad_(False)
    inject_adapter_in_model(make_lora_config(vision_block_targets(tower, LORA_LAYERS), r=4, alpha=8, dropout=0.0),
                            tower)
    for name, param in tower.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    enable_fast_paths(tower)
    heads = ForensicHeads.from_vision_config(tower.config, TAPPED, 16)
    return ForensicViT(tower, TAPPED, heads).train()


def _step(model, batch):
    """Loss and every trainable gradient of one step, plus the bytes autograd kept for the backward."""
    kept = []
    torch.manual_seed(0)  # the heads' dropout draws the same masks in both runs

    def pack(tensor):
        kept.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch["pixel_values"], vision_grid(batch))
        loss = forensic_loss(out["cls_logit"], out["heatmap_logit"], batch["mask"], batch["labels"],
                             ForensicLossWeights())["total"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, sum(kept)


def test_the_collator_hands_the_grid_over_from_the_host():
    batch = _batch()
    assert batch[GRID_HOST_KEY] == tuple(tuple(row) for row in batch["image_grid_thw"].tolist())
    assert isinstance(vision_grid(batch), tuple)
    assert vision_grid({"image_grid_thw": batch["image_grid_thw"]}) is batch["image_grid_thw"]


def test_host_grid_gives_the_tensor_grid_outputs():
    batch = _batch()
    model = _model().eval()
    with torch.no_grad():
        host = model(batch["pixel_values"], batch[GRID_HOST_KEY])
        tensor = model(batch["pixel_values"], batch["image_grid_thw"])
    for key in ("cls_logit", "heatmap_logit"):
        assert torch.equal(host[key], tensor[key])


def test_recomputed_blocks_give_the_same_gradients_and_keep_less():
    batch = _batch()
    plain = _model()
    recomputing = _model()
    chosen = recompute_frozen_blocks(recomputing.visual, 6, LORA_LAYERS, max(TAPPED))
    assert len(chosen) == 6 and len(set(chosen)) == 6
    assert all(min(LORA_LAYERS) < i <= max(TAPPED) and i not in LORA_LAYERS for i in chosen)
    loss, grads, kept = _step(plain, batch)
    loss_r, grads_r, kept_r = _step(recomputing, batch)
    assert torch.allclose(loss, loss_r, rtol=0, atol=1e-7)
    assert grads.keys() == grads_r.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        assert torch.allclose(grads[name], grads_r[name], rtol=1e-5, atol=1e-7), name
    # Six of the 17 blocks that keep activations (3..20) no longer do.
    assert kept_r < 0.85 * kept


def test_recompute_takes_at_most_the_blocks_that_qualify():
    model = _model()
    assert recompute_frozen_blocks(model.visual, 0, LORA_LAYERS, max(TAPPED)) == []
    qualifying = max(TAPPED) - min(LORA_LAYERS) + 1 - len(LORA_LAYERS)
    assert len(recompute_frozen_blocks(model.visual, qualifying, LORA_LAYERS, max(TAPPED))) == qualifying
    # Asking for more recomputes every qualifying block (the shipped 10 with other layers).
    model = _model()
    chosen = recompute_frozen_blocks(model.visual, 17, LORA_LAYERS, max(TAPPED))
    assert chosen == [i for i in range(min(LORA_LAYERS), max(TAPPED) + 1) if i not in LORA_LAYERS]
    assert [i for i, b in enumerate(model.visual.blocks) if b.gradient_checkpointing] == chosen


def test_warm_up_leaves_no_trace():
    """The throwaway step restores the random number generator and clears every gradient, so the
    run that follows draws the dropout masks and data order of a run without it."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1)).train()
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    seconds = warm_up(accelerator, model, lambda: model(torch.randn(8, 4)).sum().backward())
    assert seconds >= 0
    assert torch.equal(torch.rand(5), expected)
    assert all(p.grad is None for p in model.parameters())


def _order(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_first_batch_comes_back_first_and_warm_up_keeps_the_data_order(workers):
    """The warm-up step's batch is taken from the shuffled loader first; the epoch then yields it
    and the rest in the order a run without the warm-up would see, and the next epoch reshuffles."""
    model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1)).train()
    accelerator = Accelerator(cpu=True)
    data = torch.arange(10, dtype=torch.float32)

    def loader():
        return DataLoader(data, batch_size=3, shuffle=True, num_workers=workers)

    def step(batch):
        model(batch[:, None]).sum().backward()

    torch.manual_seed(5)
    plain = loader()
    warm_up(accelerator, model, lambda: step(torch.zeros(3)))
    want = [_order(plain), _order(plain)]
    torch.manual_seed(5)
    batches = FirstBatch(loader())
    first = batches.first()
    assert batches.first() is first and len(batches) == 4
    warm_up(accelerator, model, lambda: step(batches.first()))
    got = [_order(batches), _order(batches)]
    assert got == want and got[0][:3] == [int(i) for i in first] and sorted(got[0]) == list(range(10))
    assert got[0] != got[1]
    empty = FirstBatch(DataLoader(data[:0], batch_size=3))
    assert empty.first() is None and _order(empty) == []


def test_evaluation_warm_up_predicts_the_first_batch_then_times_the_whole_split(tiny_root, tmp_path, capsys):
    calls = []

    def predict(loader, num_records):
        positions = [int(i) for batch in loader for i in batch["position"]]
        calls.append((num_records, positions))
        return positions

    for warm in (True, None):
        calls.clear()
        evaluate = SplitEvaluator(Accelerator(cpu=True), str(tiny_root / "data"), "fail", tmp_path, batch_size=5,
                                  num_workers=1, dataset=lambda records: list(range(len(records))),
                                  collate=lambda items: {"position": torch.tensor(items)}, warm_up=warm)
        evaluate.start(str(tiny_root / "data" / "testset2" / "annotation.json"))
        test, _ = evaluate.run(predict, scores=())
        assert test.predictions == list(range(12)) and calls[-1] == (12, list(range(12)))
        printed = capsys.readouterr().out
        if warm:   # one throwaway batch, then the full split, the first batch included
            assert calls[0] == (5, [0, 1, 2, 3, 4]) and len(calls) == 2
            assert "[warm-up] one throwaway batch" in printed
        else:      # the default on a CPU: no warm-up
            assert len(calls) == 1 and "[warm-up]" not in printed
        line = evaluate.speed_line()
        assert line.startswith("[speed] evaluation: 12 images; inference ") and "; whole run " in line

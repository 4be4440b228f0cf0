"""predict.py on a folder of mixed images with a Task 1, a Task 2 and a Task 3 checkpoint from the tiny
model: one row per image, heatmaps and overlays at the original size, bad files listed; the scores
equal what the evaluation scripts compute for the same images; checkpoint detection and its errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_forensics.checkpoints.detect import CheckpointError, detect_checkpoint
from qwen_forensics.checkpoints.task1 import attach_task1_checkpoint
from qwen_forensics.checkpoints.task3 import load_hybrid_model
from qwen_forensics.data.collate import HybridCollator, hybrid_inputs
from qwen_forensics.data.geometry import letterbox_geometry, letterbox_image, unletterbox
from qwen_forensics.evaluation.images import collect_images
from qwen_forensics.evaluation.predictions import greedy_answer_ids
from qwen_forensics.model.loader import load_model, load_processor, load_vision_tower
from qwen_forensics.evaluation.images import OVERLAY_SIDE
from browser import Page, chromium, needs_chromium
from scripts import demo_index, load_script, run_script

MODEL = "Qwen2.5-VL-7B-Instruct"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def inputs(tiny_root, tmp_path_factory) -> dict:
    """A folder: the demo test images (sizes 240x320 .. 1280x720), a grey PNG and an RGBA PNG of odd
    sizes, a truncated JPEG, a text file named like a JPEG and a non-image name; plus one loose file."""
    folder = tmp_path_factory.mktemp("predict_inputs")
    test = json.loads(demo_index(tiny_root, "test").read_text())
    for record in test:
        shutil.copy(tiny_root / "data" / record["image_path"], folder)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (61, 97), dtype=np.uint8)).save(folder / "grey_odd.PNG")
    Image.fromarray(rng.integers(0, 256, (500, 37, 4), dtype=np.uint8), "RGBA").save(folder / "tall_alpha.png")
    whole = (tiny_root / "data" / test[0]["image_path"]).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "not_an_image.jpg").write_text("hello")
    (folder / "notes.txt").write_text("not scanned")
    loose = tmp_path_factory.mktemp("loose") / "loose.jpeg"
    shutil.copy(tiny_root / "data" / test[1]["image_path"], loose)
    good = sorted([*(Path(r["image_path"]).name for r in test), "grey_odd.PNG", "tall_alpha.png"])
    return {"folder": folder, "loose": loose, "good": good, "test": test}


def predict(ckpt: Path, inputs: dict, out: Path, *extra: str) -> tuple[list[dict], str]:
    printed = run_script("predict", None, argv=["--ckpt", str(ckpt), str(inputs["folder"]), str(inputs["loose"]),
                                                "--out", str(out), "--batch-size", "5", "--num-workers", "0",
                                                *extra])
    rows = json.loads((out / "predictions.json").read_text())
    with (out / "predictions.csv").open(newline="") as f:
        assert [dict(r) for r in csv.DictReader(f)] == [{k: str(v) for k, v in r.items()} for r in rows]
    return rows, printed


def _check_rows_and_files(rows: list[dict], inputs: dict, out: Path, printed: str, heatmaps: bool) -> None:
    names = [Path(r["image"]).name for r in rows]
    assert names == [*inputs["good"], "loose.jpeg"], "one row per readable image, folder order then the loose file"
    for row in rows:
        with Image.open(row["image"]) as img:
            assert (row["width"], row["height"]) == img.size
        assert 0.0 <= row["p_fake"] <= 1.0 and row["verdict"] == ("fake" if row["p_fake"] >= 0.5 else "real")
        if heatmaps:
            with Image.open(out / row["heatmap_png"]) as picture:
                assert picture.size == (row["width"], row["height"]) and picture.mode == "L"
            with Image.open(out / row["overlay_jpg"]) as picture:
                scale = min(1.0, OVERLAY_SIDE / max(row["width"], row["height"]))
                assert picture.format == "JPEG" and max(picture.size) == round(max(row["width"], row["height"]) * scale)
        else:
            assert "heatmap_png" not in row
    skipped = json.loads((out / "skipped.json").read_text())
    bad = {Path(b["path"]).name: b["reason"] for b in skipped["bad"]}
    assert set(bad) == {"truncated.jpg", "not_an_image.jpg"}
    assert bad["truncated.jpg"].startswith("truncated:") and bad["not_an_image.jpg"].startswith("unreadable:")
    assert [Path(p).name for p in skipped["ignored_not_image_names"]] == ["notes.txt"]
    for name in bad:
        assert f"skipped {inputs['folder'] / name}: " in printed
    assert f"{len(rows)} images predicted" in printed and "2 skipped" in printed


def _scores_by_name(rows: list[dict], key: str) -> dict[str, float]:
    return {Path(r.get("image") or r["image_path"]).name: r[key] for r in rows}


def test_task1_heads_on_mixed_images(task1_ckpt, tiny_root, inputs, tmp_path):
    out = tmp_path / "out"
    rows, printed = predict(task1_ckpt, inputs, out)
    _check_rows_and_files(rows, inputs, out, printed, heatmaps=True)
    assert "checkpoint: task1" in printed and all("p_fake_lm" not in r and "answer_text" not in r for r in rows)
    assert all(r["p_fake"] == r["p_fake_head"] for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert (run["kind"], run["image_size"], run["model"]) == ("task1", 112, str(tiny_root / MODEL))

    # The same numbers as the evaluation script on the same images.
    eval_out = tmp_path / "eval"
    run_script("lora_eval", tiny_root, f"ckpt_path={task1_ckpt}", f"out_dir={eval_out}",
               f"csv_path={eval_out / 'metrics.csv'}", f"output_json={eval_out / 'predictions.json'}", "num_workers=0",
               "num_heatmaps=0")
    evaluated = _scores_by_name(json.loads((eval_out / "predictions.json").read_text()), "p_fake")
    predicted = _scores_by_name(rows, "p_fake_head")
    for name, p in evaluated.items():
        assert predicted[name] == pytest.approx(p, abs=1e-5), name

    # The heatmap PNG is the heads' map of the letterboxed image, mapped back to the original size.
    model = attach_task1_checkpoint(load_vision_tower(tiny_root / MODEL, dtype="float32"), task1_ckpt).eval()
    processor = load_processor(tiny_root / MODEL, 112)
    for row in (rows[0], next(r for r in rows if r["image"].endswith("tall_alpha.png"))):
        with Image.open(row["image"]) as img:
            batch = processor.image_processor(images=[letterbox_image(img, 112)[0]], return_tensors="pt")
        with torch.no_grad():
            heat = torch.sigmoid(model(batch["pixel_values"], batch["image_grid_thw"])["heatmap_logit"])[0]
        expected = unletterbox(heat.numpy(), letterbox_geometry(row["height"], row["width"], 112))
        saved = np.asarray(Image.open(out / row["heatmap_png"]), dtype=np.float64) / 255
        assert np.abs(saved - expected).max() <= 0.5 / 255 + 1e-6


def test_loader_workers_give_the_same_rows(task1_ckpt, inputs, tmp_path):
    """--num-workers decodes in other processes; the rows (order, sizes, scores) are the same."""
    rows = [predict(task1_ckpt, inputs, tmp_path / f"out{n}", "--num-workers", str(n))[0] for n in (0, 2)]
    strip = [[{k: v for k, v in r.items() if not k.endswith(("_png", "_jpg"))} for r in run] for run in rows]
    assert strip[0] == strip[1] and len(strip[0]) == len(inputs["good"]) + 1


def test_task2_answer_and_text_on_mixed_images(task2_adapter, tiny_root, inputs, tmp_path):
    out = tmp_path / "out"
    rows, printed = predict(task2_adapter, inputs, out, "--max-new-tokens", "3")
    _check_rows_and_files(rows, inputs, out, printed, heatmaps=False)
    assert all(set(r) >= {"p_fake_lm", "answer_text"} and "p_fake_head" not in r for r in rows)
    eval_out = tmp_path / "eval"
    run_script("lora_infer", tiny_root, f"lora_path={task2_adapter}", f"out_dir={eval_out}",
               f"csv_path={eval_out / 'metrics.csv'}", f"output_json={eval_out / 'predictions.json'}", "num_workers=0",
               "max_new_tokens=3", "torch_dtype=float32")
    evaluated = json.loads((eval_out / "predictions.json").read_text())
    by_name = {Path(r["image"]).name: r for r in rows}
    for row in evaluated:
        mine = by_name[Path(row["image_path"]).name]
        assert mine["p_fake_lm"] == pytest.approx(row["p_fake"], abs=1e-5)
        assert mine["answer_text"] == row["generated_text"]


def test_task3_heads_answer_and_text_on_mixed_images(task3_run, tiny_root, inputs, tmp_path):
    out = tmp_path / "out"
    # The training output folder: its final/ checkpoint is found and said so.
    rows, printed = predict(task3_run, inputs, out)
    assert f"using its final checkpoint {task3_run / 'final'}" in printed
    _check_rows_and_files(rows, inputs, out, printed, heatmaps=True)
    assert all(r["p_fake"] == r["p_fake_lm"] and isinstance(r["answer_text"], str) for r in rows)
    final = task3_run / "final"
    eval_out = tmp_path / "eval"
    run_script("hybrid_eval", tiny_root, f"lora_checkpoint={final / 'adapter'}",
               f"head_checkpoint={final / 'heads.safetensors'}", f"fusion_checkpoint={final / 'fusion.safetensors'}",
               f"out_dir={eval_out}", f"csv_path={eval_out / 'metrics.csv'}",
               f"output_json={eval_out / 'predictions.json'}", "num_workers=0", "num_heatmaps=0", "torch_dtype=float32")
    evaluated = json.loads((eval_out / "predictions.json").read_text())
    by_name = {Path(r["image"]).name: r for r in rows}
    for row in evaluated:
        mine = by_name[Path(row["image_path"]).name]
        assert mine["p_fake_lm"] == pytest.approx(row["p_fake_lm"], abs=1e-5)
        assert mine["p_fake_head"] == pytest.approx(row["p_fake_head"], abs=1e-5)


def test_task3_greedy_answer_is_the_argmax_continuation(task3_run, tiny_root, inputs):
    """Token 1 is the argmax at the answer position; token 2 the argmax after appending it; a batch
    decodes as its rows do alone (no leak between rows through padding)."""
    base = load_model(tiny_root / MODEL, dtype="float32")
    processor = load_processor(tiny_root / MODEL, 112)
    ckpt = detect_checkpoint(task3_run / "final")
    model, _ = load_hybrid_model(base, processor, ckpt.task3)
    model.eval()
    collate = HybridCollator(processor, model.prompt)
    images = [letterbox_image(Image.open(inputs["folder"] / name), 112)[0] for name in inputs["good"][:3]]
    batch = collate([{"image": image, "position": i} for i, image in enumerate(images)])
    tokenizer = processor.tokenizer
    ids = greedy_answer_ids(model, batch, 2, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, amp_dtype="fp32")
    with torch.no_grad():
        inputs_1 = hybrid_inputs(batch)
        first = model(**inputs_1, logits_to_keep=1).logits[:, -1]
        banned = [base.config.image_token_id, base.config.video_token_id, base.config.vision_start_token_id,
                  base.config.vision_end_token_id, model.prompt.slot_token_id]
        first[:, banned] = float("-inf")
        assert torch.equal(ids[:, 0], first.argmax(-1))
        # Without the collator's position_ids: the model computes the longer rows' positions itself,
        # which is what greedy_answer_ids' extension of them must equal.
        inputs_2 = dict({k: v for k, v in inputs_1.items() if k != "position_ids"},
                        input_ids=torch.cat([batch["input_ids"], ids[:, :1]], 1),
                        attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(ids[:, :1])], 1),
                        mm_token_type_ids=torch.cat([batch["mm_token_type_ids"], torch.zeros_like(ids[:, :1])], 1))
        second = model(**inputs_2, logits_to_keep=1).logits[:, -1]
        second[:, banned] = float("-inf")
        assert torch.equal(ids[:, 1], second.argmax(-1))
    for i in range(3):
        alone = collate([{"image": images[i], "position": 0}])
        assert torch.equal(greedy_answer_ids(model, alone, 2, eos_token_id=-1, pad_token_id=0, amp_dtype="fp32")[0],
                           ids[i])


def _seed_layout(final: Path, folder: Path) -> Path:
    """hybrid_train.py's files under the seed's names (task3_lora/, task3_heads/fusion.safetensors)."""
    folder.mkdir()
    shutil.copytree(final / "adapter", folder / "task3_lora")
    shutil.copy(final / "heads.safetensors", folder / "task3_heads.safetensors")
    shutil.copy(final / "fusion.safetensors", folder / "task3_fusion.safetensors")
    shutil.copy(final / "resolved_config.json", folder / "resolved_config.json")
    return folder


def test_detection_of_every_layout(task1_ckpt, task2_adapter, task3_run, tiny_root, tmp_path):
    t1 = detect_checkpoint(task1_ckpt)
    assert (t1.kind, t1.image_size, t1.model_path, t1.has_heads, t1.has_lm) == ("task1", 112, str(tiny_root / MODEL),
                                                                                True, False)
    assert detect_checkpoint(task1_ckpt.parent).folder == task1_ckpt, "the training output folder holds final/"
    t2 = detect_checkpoint(task2_adapter)
    assert (t2.kind, t2.image_size, t2.has_heads, t2.has_lm) == ("task2", 112, False, True)
    assert t2.model_path == str(tiny_root / MODEL)
    assert detect_checkpoint(task2_adapter.parent).folder == task2_adapter, "its only checkpoint subfolder"
    t3 = detect_checkpoint(task3_run / "final")
    assert t3.kind == "task3" and t3.task3.adapter_dir == task3_run / "final" / "adapter"
    assert detect_checkpoint(task3_run / "epoch_0").task3.fusion_file == task3_run / "epoch_0" / "fusion.safetensors"
    seed = detect_checkpoint(_seed_layout(task3_run / "final", tmp_path / "seed"))
    assert (seed.task3.adapter_dir.name, seed.task3.heads_file.name, seed.task3.fusion_file.name) == (
        "task3_lora", "task3_heads.safetensors", "task3_fusion.safetensors")
    assert seed.model_path == str(tiny_root / MODEL) and seed.image_size == 112


def test_detection_errors_say_what_a_checkpoint_folder_holds(task3_run, task1_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"not a checkpoint folder \(it holds: readme\.txt\).*Task 1 "
                                              r"\(lora_train\.py\): adapter/ \+ heads\.safetensors"):
        detect_checkpoint(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not a folder"):
        detect_checkpoint(tmp_path / "absent")
    two = _seed_layout(task3_run / "final", tmp_path / "two")
    shutil.copy(two / "task3_heads.safetensors", two / "other_heads.safetensors")
    assert detect_checkpoint(two).task3.heads_file.name == "task3_heads.safetensors", "paired by name"
    shutil.copy(two / "task3_heads.safetensors", two / "third.safetensors")
    (two / "task3_heads.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"which heads file .*other_heads\.safetensors, third\.safetensors"):
        detect_checkpoint(two)
    no_adapter = _seed_layout(task3_run / "final", tmp_path / "no_adapter")
    shutil.rmtree(no_adapter / "task3_lora")
    with pytest.raises(CheckpointError, match="trained with LoRA but no adapter folder"):
        detect_checkpoint(no_adapter)
    for name in ("a", "b"):
        shutil.copytree(task1_ckpt, tmp_path / "several" / name)
    with pytest.raises(CheckpointError, match=r"holds several checkpoints \(a, b\) and names none as final"):
        detect_checkpoint(tmp_path / "several")
    bare = tmp_path / "bare_task1"
    shutil.copytree(task1_ckpt, bare)
    (bare / "resolved_config.json").unlink()
    with pytest.raises(CheckpointError, match="needs the resolved_config.json lora_train.py writes"):
        detect_checkpoint(bare)


def test_cli_errors_before_loading(task1_ckpt, inputs, tmp_path, capsys):
    predict_main = load_script("predict").main
    assert predict_main(["--ckpt", str(tmp_path), str(inputs["folder"])]) == 2
    assert "is not a checkpoint folder" in capsys.readouterr().err
    assert predict_main(["--ckpt", str(task1_ckpt), "--model", str(tmp_path / "gone"), str(inputs["folder"])]) == 2
    assert "pass --model PATH" in capsys.readouterr().err
    out = tmp_path / "out"
    assert predict_main(["--ckpt", str(task1_ckpt), "--out", str(out), str(inputs["folder"] / "notes.txt")]) == 1
    assert "none of the inputs is a readable image" in capsys.readouterr().err
    assert json.loads((out / "skipped.json").read_text())["bad"][0]["reason"].startswith("unreadable:")


def test_collect_images_skips_the_output_folder_and_recurses_on_request(tmp_path):
    rng = np.random.default_rng(1)
    for rel in ("a.jpg", "sub/b.png", "out/heatmaps/c.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / rel)
    flat = collect_images([tmp_path], exclude=tmp_path / "out")
    assert [p.name for p in flat.images] == ["a.jpg"] and flat.sizes == [(20, 30)]
    deep = collect_images([tmp_path, tmp_path / "a.jpg"], recursive=True, exclude=tmp_path / "out")
    assert [p.relative_to(tmp_path).as_posix() for p in deep.images] == ["a.jpg", "sub/b.png"]


@needs_chromium
def test_gallery_page_lists_every_image_and_skip_and_renders(task1_ckpt, tiny_root, inputs, tmp_path, monkeypatch):
    """index.html: one card per image (preview, overlay, score, verdict), the skipped files with reasons,
    pictures named relative to the output folder (not to where the command ran); a 16x16 image warned."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for record in inputs["test"][:3]:
        shutil.copy(tiny_root / "data" / record["image_path"], folder)
    Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(folder / "tiny16.png")
    (folder / "broken.jpg").write_text("not a picture")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    printed = run_script("predict", None, argv=["--ckpt", str(task1_ckpt), str(folder), "--out", "preds",
                                                "--num-workers", "0"])
    out = elsewhere / "preds"
    rows = json.loads((out / "predictions.json").read_text())
    assert all(Path(r["image"]).is_absolute() for r in rows)
    small = next(r for r in rows if r["image"].endswith("tiny16.png"))
    assert small["letterbox_scale"] == 7.0 and "1 image(s) enlarged more than 4x" in printed
    assert "tiny16.png (16x16, 7.0x)" in printed
    assert f"gallery (open in a browser): {out / 'index.html'}" in printed
    page_text = (out / "index.html").read_text()
    page = Page(page_text)
    assert page.tags["script"] == 0, "sorting and filtering are CSS only"
    pictures = [link for link in page.links]
    assert len(pictures) == 2 * len(rows) and all(not Path(p).is_absolute() for p in pictures)
    assert all((out / p).is_file() for p in pictures)
    assert {r["overlay_jpg"] for r in rows} <= set(pictures)
    for p in pictures:
        with Image.open(out / p) as picture:
            assert max(picture.size) <= 1024
    assert page_text.count('class="card ') == len(rows)
    assert "broken.jpg" in page_text and "unreadable:" in page_text
    assert "enlarged 7.0x" in page_text
    shot = tmp_path / "index.png"
    dom = Page(chromium(tmp_path, out / "index.html", "--dump-dom", f"--screenshot={shot}",
                        "--window-size=1280,900").stdout)
    assert [h for tag, h in dom.headings if tag == "h2"] == ["Images", "Skipped files"]
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 500, "the pictures were drawn"
    scale_red = ((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum()
    assert scale_red > 50, "the colour scale's red middle is on screen"

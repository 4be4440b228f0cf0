"""Drop an image, see the verdict, the heatmap and the model's answer in one view: a local web app.

    python Qwen_code/app.py --ckpt <root>/task1_modular_lora/training/final [--model PATH]
        [--host 127.0.0.1] [--port 7860] [--max-file-size 20mb] [--batch-size 8] [--max-new-tokens 4]
    python Qwen_code/app.py --ckpt DIR --latency frame_1080p.jpg [--repeats 20]

Needs the optional ``app`` extra (``pip install -e ".[app]"``: Gradio; ``bash .ci/run`` puts it in
``.venv-app``). ``--ckpt`` is any checkpoint ``predict.py`` takes (Task 1, 2 or 3, detected the same way),
loaded once at start; the header shows the task, base model, image size, the set it was trained on and
the last validation metrics of its training log. Each uploaded (or pasted) image goes through
``predict.py``'s own code path (``qwen_forensics.evaluation.interactive``): ``p_fake`` of every head the
checkpoint has, the verdict at the threshold slider (a tuned threshold recorded with the checkpoint, else
0.5), the LM's short answer (Tasks 2 and 3) and, with heatmaps, the overlay at the original resolution
(opacity slider) and the binary mask at the threshold. The sliders redraw from the kept results; the model
is not run again. The perturb control (JPEG quality, blur, noise, resize: ``data.perturb``, as the
evaluation scripts' ``--perturb``) predicts the perturbed image too and shows both side by side. Downloads:
each image's row (CSV and JSON, predict.py's columns) and mask PNG.

The server binds 127.0.0.1 unless ``--host`` says otherwise and never opens a public share link. Requests
are queued; the HTTP endpoint ``/predict`` (one file, perturbation kind, level) batches the requests
waiting together into one forward (up to ``--batch-size``). Uploads above ``--max-file-size`` are refused;
a non-image or truncated file gets its reason in the page and the server keeps serving.

``--latency IMAGE``: no server; load the model, predict IMAGE ``--repeats`` times after one warm-up and
print the median latency (the README's device figure).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from qwen_forensics.checkpoints import open_checkpoint
from qwen_forensics.data import Perturbation
from qwen_forensics.data.perturb import KINDS
from qwen_forensics.evaluation import InteractivePredictor, binary_mask, overlay, row_files, verdict
from qwen_forensics.training import make_accelerator

NONE = "none"
SCORE_KEYS = ("p_fake", "p_fake_head", "p_fake_lm")
DEFAULT_LEVELS = {"jpeg": 50, "blur": 7, "noise": 11, "resize": 0.5}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path, help="checkpoint folder (Task 1, 2 or 3) or the training "
                                                                 "output folder holding one")
    parser.add_argument("--model", help="base model folder (default: the one the checkpoint's training recorded)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine "
                                                            "only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--max-file-size", default="20mb", help="largest upload accepted (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward; also the most waiting "
                                                                  "requests batched together (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="tokens of the LM's answer text (Tasks 2 and "
                                                                      "3; default: %(default)s)")
    parser.add_argument("--no-fast-paths", dest="fast_paths", action="store_false",
                        help="run plain transformers instead of the fast paths")
    parser.add_argument("--latency", type=Path, metavar="IMAGE", help="measure the median latency of one image and "
                                                                      "exit (no server)")
    parser.add_argument("--repeats", type=int, default=20, help="predictions timed by --latency (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 0 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1, --max-new-tokens >= 0")
    return args


def perturbation_of(kind: str | None, level: float | None) -> Perturbation | None:
    """The perturb control's condition (None: the image as it is; an empty or 0 level: :data:`DEFAULT_LEVELS`);
    ValueError naming the fix."""
    if not kind or kind == NONE:
        return None
    return Perturbation(kind, float(level if level else DEFAULT_LEVELS[kind]))


def summary(result, threshold: float) -> dict:
    """The JSON answer of one file: predict.py's scores, the verdict at ``threshold``, the answer text."""
    if result.error:
        return {"image": result.name, "error": result.error}
    row = result.row
    return {"image": result.name, **{k: row[k] for k in ("perturbation", "level", "height", "width", *SCORE_KEYS,
                                                          "answer_text") if k in row},
            "verdict": verdict(row, threshold)}


def measure_latency(predictor: InteractivePredictor, image: Path, repeats: int) -> None:
    predictor.predict([image])
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = predictor.predict([image])[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    if result.error:
        raise SystemExit(f"error: {result.error}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"[latency] {image.name} ({result.row['height']}x{result.row['width']}), {predictor.ckpt.kind}: median "
          f"{statistics.median(seconds) * 1000:.1f} ms over {repeats} predictions (after one warm-up) on {device}")


def render(pairs, threshold: float, opacity: float, downloads: Path):
    """The page's results from the kept predictions ``pairs`` ((clean, perturbed or None) per file) at the
    sliders' values: the table, the gallery (overlay and mask, or the image without heatmaps), the LM's
    answers, the download files (written into a new folder in ``downloads``, so two users never overwrite
    each other's) and the error messages. Only the kept arrays are used: moving a slider never runs the model."""
    table, pictures, answers, files, errors = [], [], [], [], []
    downloads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=downloads))
    for clean, perturbed in pairs or []:
        for result in (clean, perturbed):
            if result is None:
                continue
            if result.error:
                errors.append(result.error)
                continue
            table.append([result.name, verdict(result.row, threshold),
                          *(round(result.row[k], 4) if k in result.row else None for k in SCORE_KEYS),
                          result.row.get("perturbation", NONE), result.row.get("level", "")])
            label = f"{result.name} ({result.row.get('perturbation', NONE)} {result.row.get('level', '')})"
            if result.heat is not None:
                pictures += [(overlay(result, opacity), f"{label}: overlay"),
                             (binary_mask(result, threshold), f"{label}: mask >= {threshold:.2f}")]
            else:
                pictures.append((result.rgb, label))
            if "answer_text" in result.row:
                answers.append(f"- **{label}**: {result.row['answer_text']!r}")
            files += [str(f) for f in row_files(result, threshold, folder / f"{len(files):04d}")]
    message = "\n".join(f"⚠️ {e}" for e in errors)
    return (table, pictures, "\n".join(answers) or "(no language-model answer for this checkpoint)", files or None,
            message)


def build_app(predictor: InteractivePredictor, *, batch_size: int):
    """The Gradio page and its HTTP endpoint ``/predict``."""
    import gradio as gr

    card = predictor.card
    downloads = Path(tempfile.mkdtemp(prefix="qwen_forensics_app_"))

    def run(paths, kind, level):
        perturbation = perturbation_of(kind, level)
        clean = predictor.predict(paths)
        perturbed = predictor.predict(paths, perturbation) if perturbation is not None else [None] * len(paths)
        return list(zip(clean, perturbed))

    def predict_ui(upload, pasted, kind, level, threshold, opacity):
        paths = [*(upload or []), *([pasted] if pasted else [])]
        if not paths:
            return None, *render([], threshold, opacity, downloads)[:4], "Upload or paste an image first."
        try:
            pairs = run(paths, kind, level)
        except ValueError as err:
            return None, *render([], threshold, opacity, downloads)[:4], f"⚠️ {err}"
        return pairs, *render(pairs, threshold, opacity, downloads)

    def predict_api(files, kinds, levels):
        """Batched: the requests waiting together, grouped by condition, each group one pass of forwards."""
        print(f"[batch] {len(files)} request{'s' if len(files) > 1 else ''} in one pass", flush=True)
        answers, overlays = [None] * len(files), [None] * len(files)
        groups: dict[tuple, list[int]] = {}
        for i, (kind, level) in enumerate(zip(kinds, levels)):
            groups.setdefault((kind or NONE, level), []).append(i)
        for (kind, level), members in groups.items():
            try:
                perturbation = perturbation_of(kind, level)
            except ValueError as err:
                for i in members:
                    answers[i] = {"error": str(err)}
                continue
            for i, result in zip(members, predictor.predict([files[i] for i in members], perturbation)):
                answers[i] = summary(result, card.default_threshold)
                overlays[i] = overlay(result, 0.5) if not result.error else None
        return answers, overlays

    columns = ["image", "verdict", *SCORE_KEYS, "perturbation", "level"]
    facts = "\n".join(f"| {k} | {v} |" for k, v in card.facts().items())
    with gr.Blocks(title="Forgery detection and localisation") as page:
        gr.Markdown(f"## Forgery detection and localisation\n\n| | |\n|---|---|\n{facts}")
        with gr.Row():
            upload = gr.File(file_count="multiple", label="Images (one or several)")
            pasted = gr.Image(type="filepath", sources=["upload", "clipboard"], label="...or paste one")
        with gr.Row():
            kind = gr.Dropdown([NONE, *KINDS], value=NONE, label="Perturb (shown beside the original)")
            level = gr.Number(value=0, label="Level: JPEG quality, blur kernel, noise variance or resize factor "
                                             "(0: jpeg 50, blur 7, noise 11, resize 0.5)")
            button = gr.Button("Predict", variant="primary")
        with gr.Row():
            threshold = gr.Slider(0, 1, value=card.default_threshold, step=0.01, label="Threshold (verdict, mask)")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")
        message = gr.Markdown(elem_id="message")
        table = gr.Dataframe(headers=columns, label="P(fake) per head and verdict", elem_id="verdicts")
        gallery = gr.Gallery(label="Overlay and mask (original resolution)", columns=4, height=420,
                             object_fit="contain", elem_id="overlays")
        answer = gr.Markdown(label="Language model's answer")
        files = gr.File(label="Downloads: rows (CSV, JSON) and masks", file_count="multiple")
        state = gr.State()
        outputs = [table, gallery, answer, files, message]
        button.click(predict_ui, [upload, pasted, kind, level, threshold, opacity], [state, *outputs],
                     concurrency_id="model", api_name="predict_page")
        for slider in (threshold, opacity):
            slider.change(lambda pairs, t, o: render(pairs, t, o, downloads), [state, threshold, opacity], outputs,
                          api_name=False)
        with gr.Row(visible=False):
            api_file = gr.File(label="file")
            api_kind = gr.Textbox(label="perturbation")
            api_level = gr.Number(label="level")
            api_answer = gr.JSON(label="answer")
            api_overlay = gr.Image(label="overlay")
            api_button = gr.Button("predict")
        api_button.click(predict_api, [api_file, api_kind, api_level], [api_answer, api_overlay], batch=True,
                         max_batch_size=batch_size, concurrency_id="model", api_name="predict")
    return page


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opened = open_checkpoint(args.ckpt, args.model)
    if opened is None:
        return 2
    ckpt, model = opened
    predictor = InteractivePredictor(ckpt, model, make_accelerator(1), batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, fast_paths=args.fast_paths)
    predictor.load()
    print(f"checkpoint: {ckpt.kind} at {ckpt.folder}; model: {model}")
    if args.latency:
        measure_latency(predictor, args.latency, args.repeats)
        return 0
    page = build_app(predictor, batch_size=args.batch_size)
    # One model: every event shares the "model" slot, so requests queue instead of running the model at once.
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=args.host, server_port=args.port, share=False, max_file_size=args.max_file_size,
                show_error=True)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())

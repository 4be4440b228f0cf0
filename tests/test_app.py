"""The local web app (``Qwen_code/app.py``) on the tiny checkpoint of each task: its prediction function equals
predict.py's row, the sliders redraw without the model, and, in the app's own venv (Gradio pins pillow<13,
so ``.ci/run`` makes ``.venv-app`` on top of the project's packages), the server through its HTTP API
(gradio_client) and in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import find_chromium, needs_chromium
from conftest import TINY_IMAGE_SIZE
from qwen_forensics.checkpoints import base_model_path, detect_checkpoint
from qwen_forensics.data import load_index
from qwen_forensics.evaluation import InteractivePredictor
from qwen_forensics.training import make_accelerator
from scripts import APP_PYTHON, CODE, csv_rows, demo_index, load_script, needs_app, run_script

pytestmark = pytest.mark.usefixtures("single_thread")
PICTURE_KEYS = ("heatmap_png", "overlay_jpg")
SCREENSHOT = CODE / "assets" / "app.png"


@pytest.fixture(scope="module")
def ckpts(task1_ckpt, task2_adapter, task3_run) -> dict:
    return {"task1": task1_ckpt, "task2": task2_adapter, "task3": task3_run / "final"}


@pytest.fixture(scope="module")
def images(tiny_root, tmp_path_factory) -> dict:
    """Two test images (a JPEG as shipped, the other saved as PNG) and a text file."""
    folder = tmp_path_factory.mktemp("app_inputs")
    records = load_index(demo_index(tiny_root, "test"))
    fake = next(r for r in records if r.label == 1)
    real = next(r for r in records if r.label == 0)
    jpeg = folder / Path(fake.image_path).name
    shutil.copy(tiny_root / "data" / fake.image_path, jpeg)
    png = folder / (Path(real.image_path).stem + ".png")
    with Image.open(tiny_root / "data" / real.image_path) as img:
        img.save(png)
    text = folder / "notes.txt"
    text.write_text("not an image")
    return {"jpeg": jpeg, "png": png, "text": text}


def _predictor(ckpt_dir: Path) -> InteractivePredictor:
    ckpt = detect_checkpoint(ckpt_dir)
    return InteractivePredictor(ckpt, base_model_path(ckpt), make_accelerator(1), batch_size=8, max_new_tokens=4)


@pytest.mark.parametrize("task", ["task1", "task2", "task3"])
def test_app_prediction_equals_predict_py_row(ckpts, images, tmp_path, task):
    paths = [images["jpeg"], images["png"]]
    run_script("predict", None, argv=["--ckpt", str(ckpts[task]), *map(str, paths), "--out", str(tmp_path / "out"),
                                      "--num-workers", "0"])
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    results = _predictor(ckpts[task]).predict([*paths, images["text"]])
    assert [r.row for r in results[:2]] == [{k: v for k, v in row.items() if k not in PICTURE_KEYS} for row in rows]
    assert results[2].error.startswith("notes.txt: not a readable image") and not results[2].row
    for result, row in zip(results, rows):
        assert result.rgb.shape == (row["height"], row["width"], 3)
        if "heatmap_png" in row:
            np.testing.assert_array_equal(result.heat, np.asarray(Image.open(tmp_path / "out" / row["heatmap_png"])))
        else:
            assert result.heat is None


def test_sliders_redraw_from_kept_results_without_the_model(ckpts, images, tmp_path):
    app = load_script("app")
    predictor = _predictor(ckpts["task3"])
    pairs = list(zip(predictor.predict([images["jpeg"]]),
                     predictor.predict([images["jpeg"]], app.perturbation_of("jpeg", 50))))
    calls = []
    runner = predictor.predictor.runner
    runner.predict = lambda *a, **k: calls.append(1)
    p_fake = pairs[0][0].row["p_fake"]
    low, high = app.render(pairs, p_fake - 1e-6, 0.2, tmp_path / "a"), app.render(pairs, p_fake + 1e-6, 0.9, tmp_path / "b")
    assert not calls
    table_low, gallery_low, answers, files, message = low
    assert [row[0] for row in table_low] == [images["jpeg"].name] * 2 and message == ""
    assert [row[-2:] for row in table_low] == [["none", ""], ["jpeg", "50"]]
    assert table_low[0][1] == "fake" and high[0][0][1] == "real" and table_low[0][2] == round(p_fake, 4)
    overlay_low, mask_low = gallery_low[0][0], gallery_low[1][0]
    overlay_high, mask_high = high[1][0][0], high[1][1][0]
    assert overlay_low.shape[:2] == mask_low.shape == pairs[0][0].heat.shape
    assert not np.array_equal(overlay_low, overlay_high)
    assert mask_low.sum() >= mask_high.sum()
    assert "jpeg 50" in answers and {Path(f).suffix for f in files} == {".csv", ".json", ".png"}
    written = json.loads(next(Path(f) for f in files if str(f).endswith(".json")).read_text())
    assert written == {**pairs[0][0].row, "verdict": "fake"}


def test_perturb_control_and_answer_summary(ckpts, images):
    app = load_script("app")
    assert app.perturbation_of("none", 3) is None and app.perturbation_of("blur", 0).name == "blur:7"
    assert app.perturbation_of("jpeg", 90).name == "jpeg:90"
    with pytest.raises(ValueError, match="blur:4"):
        app.perturbation_of("blur", 4)
    result = _predictor(ckpts["task2"]).predict([images["png"], images["text"]])
    answer = app.summary(result[0], 0.5)
    assert set(answer) == {"image", "height", "width", "p_fake_lm", "p_fake", "answer_text", "verdict"}
    assert app.summary(result[1], 0.5)["error"].startswith("notes.txt: not a readable image")


def test_latency_hook_prints_the_median(ckpts, images):
    printed = run_script("app", None, argv=["--ckpt", str(ckpts["task1"]), "--latency", str(images["jpeg"]),
                                            "--repeats", "2"])
    assert "[latency]" in printed and "median" in printed and "over 2 predictions" in printed


# --------------------------------------------------------------------------------------- the server (app venv)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ckpts, tmp_path_factory):
    """app.py on the Task 1 checkpoint in the app's venv: its URL, start time and printed-output file."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app_server") / "server.log"
    started = time.time()
    with log.open("w") as out:
        process = subprocess.Popen([str(APP_PYTHON), str(CODE / "app.py"), "--ckpt", str(ckpts["task1"]), "--port",
                                    str(port), "--max-file-size", "5mb"], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "0"})
    url = f"http://127.0.0.1:{port}/"
    try:
        yield {"url": url, "started": started, "process": process, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


CLIENT = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from gradio_client import Client, handle_file
url, png, jpeg, text, big = sys.argv[1:6]
deadline = time.time() + 120
while True:
    try:
        client = Client(url, verbose=False)
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(0.3)
out = {"first": list(client.predict(handle_file(jpeg), "none", 0, api_name="/predict")), "first_at": time.time()}
out["png"] = list(client.predict(handle_file(png), "none", 0, api_name="/predict"))
out["text"] = list(client.predict(handle_file(text), "none", 0, api_name="/predict"))
out["perturbed"] = list(client.predict(handle_file(jpeg), "resize", 0.5, api_name="/predict"))
jobs = [client.submit(handle_file(png if i % 2 else jpeg), "none", 0, api_name="/predict") for i in range(8)]
out["concurrent"] = [list(job.result(timeout=120)) for job in jobs]
out["after"] = list(client.predict(handle_file(jpeg), "none", 0, api_name="/predict"))
try:
    client.predict(handle_file(big), "none", 0, api_name="/predict")
    out["big"] = "accepted"
except Exception as err:
    out["big"] = str(err)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def client_answers(server, images, tmp_path_factory):
    big = tmp_path_factory.mktemp("app_big") / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(6 * 2 ** 20))
    done = subprocess.run([str(APP_PYTHON), "-c", CLIENT, server["url"], str(images["png"]), str(images["jpeg"]),
                           str(images["text"]), str(big)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_app
def test_start_up_to_first_answer_is_under_30_seconds(server, client_answers):
    assert client_answers["first_at"] - server["started"] < 30


@needs_app
def test_png_and_jpeg_return_probabilities_and_an_overlay(client_answers, images):
    for key, path in (("first", images["jpeg"]), ("png", images["png"])):
        answer, overlay_file = client_answers[key]
        assert answer["image"] == path.name and 0 <= answer["p_fake"] <= 1 and "p_fake_head" in answer
        with Image.open(path) as img, Image.open(overlay_file) as picture:
            assert picture.size == img.size
    answer, _ = client_answers["perturbed"]
    with Image.open(images["jpeg"]) as img:
        assert (answer["perturbation"], answer["height"]) == ("resize", round(img.height / 2))


@needs_app
def test_a_text_file_returns_the_error_and_the_server_keeps_serving(client_answers):
    answer, overlay_file = client_answers["text"]
    assert answer["error"].startswith("notes.txt: not a readable image") and overlay_file is None
    assert client_answers["after"][0]["p_fake"] == client_answers["first"][0]["p_fake"]


@needs_app
def test_eight_concurrent_requests_all_succeed_batched(server, client_answers):
    answers = [a for a, _ in client_answers["concurrent"]]
    batches = [int(line.split()[1]) for line in server["log"].read_text().splitlines() if line.startswith("[batch] ")]
    # Five requests one at a time (jpeg, png, text, perturbed, after) and the eight sent together.
    assert sum(batches) == 13 and max(batches) > 1, batches
    assert len(answers) == 8 and all("p_fake" in a for a in answers)
    assert {a["p_fake"] for a in answers[0::2]} == {client_answers["first"][0]["p_fake"]}
    assert {a["p_fake"] for a in answers[1::2]} == {client_answers["png"][0]["p_fake"]}


@needs_app
def test_binds_localhost_never_shares_and_limits_uploads(server, client_answers):
    assert server["url"].startswith("http://127.0.0.1:")
    assert "exceeds the maximum file size of 5242880 bytes" in client_answers["big"]
    source = (CODE / "app.py").read_text()
    assert "share=False" in source and "share=True" not in source


BROWSER = """
import base64, json, sys, time
import urllib.request
import websockets.sync.client as ws

port, url, image, shot = sys.argv[1:5]
targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
page = next(t for t in targets if t["type"] == "page")
conn = ws.connect(page["webSocketDebuggerUrl"], max_size=None)
counter = [0]

def call(method, **params):
    counter[0] += 1
    conn.send(json.dumps({"id": counter[0], "method": method, "params": params}))
    while True:
        message = json.loads(conn.recv())
        if message.get("id") == counter[0]:
            if "error" in message:
                raise RuntimeError(message["error"])
            return message.get("result", {})

def js(expression):
    return call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

call("Emulation.setDeviceMetricsOverride", width=1280, height=1600, deviceScaleFactor=1, mobile=False)
call("Page.navigate", url=url)
deadline = time.time() + 60
while not js("document.querySelector('input[type=file]') !== null"):
    if time.time() > deadline:
        raise SystemExit("no file input on the page")
    time.sleep(0.3)
call("DOM.enable")
root = call("DOM.getDocument", depth=-1)["root"]["nodeId"]
node = call("DOM.querySelector", nodeId=root, selector="input[type=file]")["nodeId"]
call("DOM.setFileInputFiles", nodeId=node, files=[image])
time.sleep(3)
js("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Predict').click()")
deadline = time.time() + 90
while True:
    text = js("document.querySelector('#verdicts') ? document.querySelector('#verdicts').innerText : ''") or ""
    pictures = js("document.querySelectorAll('#overlays img').length") or 0
    if ("fake" in text or "real" in text) and pictures >= 2:
        break
    if time.time() > deadline:
        raise SystemExit(f"no verdict/overlay in the page: {text[:300]!r}, {pictures} pictures")
    time.sleep(0.5)
time.sleep(2)
data = call("Page.captureScreenshot", format="png")["data"]
open(shot, "wb").write(base64.b64decode(data))
print(json.dumps({"table": text, "pictures": pictures}))
"""


@needs_app
@needs_chromium
def test_page_in_chromium_shows_verdict_and_overlay(server, client_answers, images, tmp_path):
    port = _free_port()
    chromium = subprocess.Popen([str(find_chromium()), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                 f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}",
                                 "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        shot = tmp_path / "app.png"
        done = subprocess.run([str(APP_PYTHON), "-c", BROWSER, str(port), server["url"], str(images["jpeg"]),
                               str(shot)], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert images["jpeg"].name[:20] in seen["table"] and seen["pictures"] >= 2
        rgb = np.asarray(Image.open(shot).convert("RGB"))
        assert rgb.shape[:2] == (1600, 1280) and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 200
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
    finally:
        chromium.terminate()
        chromium.wait(timeout=30)



def test_header_card_reads_the_training_record(ckpts, task3_run, tiny_root):
    card = _predictor(ckpts["task3"]).card
    last = csv_rows(task3_run / "log.csv")[-1]
    assert card.kind == "task3" and card.image_size == TINY_IMAGE_SIZE
    assert card.trained_on == str(demo_index(tiny_root, "train"))
    assert card.validation == {k: float(last[f"val_{k}"]) for k in ("lm_auroc", "head_auroc", "pixel_iou", "pixel_f1",
                                                                    "score", "head_score")}
    assert card.threshold is None and card.default_threshold == 0.5
    facts = _predictor(ckpts["task1"]).card.facts()
    assert facts["validation"] == "none logged" and facts["tuned threshold"].startswith("none recorded")

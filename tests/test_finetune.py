"""`effnet finetune` / `effnet_cli.finetune`: resumable training, loadable outputs, bad input refused early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cli_helpers import default_sigint, run

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}
# Tiny inputs keep every run to seconds: 32-px images, 3 classes of 6 images, batches of 4.
# Augmentation on, so the resume tests cover its per-image seeding too.
TINY = dict(image_size=32, batch_size=4, epochs=3, freeze="none", workers=0, val_split=0.34, lr=0.01,
            augment="standard")


def _cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


def make_dataset(root: Path, classes=COLOURS, per_class: int = 6, seed: int = 0) -> Path:
    """One folder of noisy single-colour images per class: learnable, and different from each other."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (np.array(colour)[None, None] + rng.normal(0, 35, (40, 48, 3))).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("colours") / "data")
    (root / "red" / "broken.jpg").write_bytes(b"this is not a JPEG")  # must be skipped, not fatal
    return root


@pytest.fixture(scope="module")
def reference(dataset, b0_small_dir, tmp_path_factory, one_thread):
    """One uninterrupted run: the result every interrupted-and-resumed run must reproduce."""
    from effnet_cli import finetune

    out = tmp_path_factory.mktemp("reference") / "out"
    result = finetune(str(dataset), out, model=str(b0_small_dir), **TINY)
    return out, result


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ------------------------------------------------------------------ outputs
def test_output_dir_has_model_metrics_and_report(reference, dataset):
    out, result = reference
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "blue", "1": "green", "2": "red"}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and all("val_top1" in r for r in records)
    assert result.history == records
    assert all(r["val_top5_k"] == 3 for r in records)  # 3 classes: "top-5" is top-3, and the record says so
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["broken.jpg"] and errors[0]["error"]
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_files"] == 1
    v = report["validation"]
    assert v["images"] == sum(map(sum, v["confusion"])) == 6
    assert [c["label"] for c in v["per_class"]] == ["blue", "green", "red"]
    assert not (out / "checkpoint.pt").exists()  # complete: nothing left to resume
    assert result.metrics == report


def test_pictures_written_when_matplotlib_is_installed(reference):
    pytest.importorskip("matplotlib")
    out, _ = reference
    for name in ("curves.png", "confusion.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")


def test_report_page_shows_the_misclassified_validation_images(reference, tmp_path):
    pytest.importorskip("jinja2")
    from tests.browser import cards_of, render

    out, _ = reference
    v = json.loads((out / "report.json").read_text())["validation"]
    off_diagonal = sum(n for i, row in enumerate(v["confusion"]) for j, n in enumerate(row) if i != j)
    assert len(v["misclassified"]) == off_diagonal
    page = out / "report.html"
    html = page.read_text("utf-8")
    assert "http:" not in html and "https:" not in html
    if (out / "confusion.png").exists():
        assert html.count('src="data:image/png;base64,') == 2  # the curves and the confusion matrix, embedded
    cards = cards_of(html)
    assert sorted(c["title"] for c in cards) == sorted(m["path"] for m in v["misclassified"])
    for card, entry in zip(cards, sorted(v["misclassified"], key=lambda m: -m["score"])):
        assert card["title"] == entry["path"] and card["thumb"]
        assert f"true: {entry['true']}" in card["note"] and f"predicted: {entry['predicted']}" in card["note"]
    shown = render(page)
    assert shown.console == [] and len(cards_of(shown.dom)) == len(cards)


def test_transformers_and_classify_give_the_same_predictions(reference, photos, dataset):
    transformers = pytest.importorskip("transformers")
    import torch
    from PIL import Image

    out, _ = reference
    images = [*photos, *sorted((dataset / "green").glob("*.png"))[:2]]
    model = transformers.EfficientNetForImageClassification.from_pretrained(str(out)).eval()
    processor = transformers.EfficientNetImageProcessor.from_pretrained(str(out))
    with torch.no_grad():
        pixels = processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt").pixel_values
        logits = model(pixel_values=pixels).logits
    theirs = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]

    done = run(["classify", *map(str, images), "--model", str(out), "--format", "jsonl", "--top-k", "1", "-j", "0"])
    assert done.exit_code == 0, done.stderr
    ours = [json.loads(line)["predictions"][0]["label"] for line in done.stdout.splitlines()]
    assert ours == theirs
    assert set(ours) <= {"red", "green", "blue"}


def test_output_loads_for_embed_and_load_pretrained(reference, photos, tmp_path):
    from effnet_cli import load_pretrained

    out, result = reference
    model, processor = load_pretrained(out)
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    assert processor.to_dict() == result.processor.to_dict()
    done = run(["embed", str(photos[0]), "--model", str(out), "-o", str(tmp_path / "f.npy"), "-j", "0"])
    assert done.exit_code == 0, done.stderr


def test_report_on_stderr(dataset, b0_small_dir, tmp_path):
    done = run(["finetune", str(dataset), "-o", str(tmp_path / "out"), "--model", str(b0_small_dir),
                *_cli_args({**TINY, "epochs": 1})])
    assert done.exit_code == 0, done.stderr
    assert "top-1" in done.stderr and "top-3" in done.stderr
    assert "1 unusable file(s) skipped" in done.stderr
    assert "precision" in done.stderr and "confusion" in done.stderr


# ------------------------------------------------------------------- resume
def test_interrupted_mid_epoch_resumes_to_the_same_weights(reference, dataset, b0_small_dir, tmp_path):
    from effnet_cli import finetune

    out = tmp_path / "out"

    def stop_in_epoch_two(event):
        if event["event"] == "step" and event["epoch"] == 2 and event["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(dataset), out, model=str(b0_small_dir), callback=stop_in_epoch_two, **TINY)
    assert (out / "checkpoint.pt").is_file() and not (out / "model.safetensors").exists()
    events = []
    finetune(str(dataset), out, model=str(b0_small_dir), resume=True, callback=events.append, **TINY)
    assert {"event": "resumed", "epoch": 1, "step": 2} in events
    assert_same_weights(out, reference[0])
    assert (out / "metrics.jsonl").read_text().count("\n") == 3


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_killed_process_resumes_to_the_same_weights(sig, reference, dataset, b0_small_dir, tmp_path):
    out = tmp_path / "out"
    args = ["finetune", str(dataset), "-o", str(out), "--model", str(b0_small_dir), *_cli_args(TINY)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "effnet_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=default_sigint)
    _wait_for(out / "checkpoint.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err.decode()
        assert "--resume" in err.decode()
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.safetensors").exists()  # really stopped before the end
    done = run([*args, "--resume"])
    assert done.exit_code == 0, done.stderr
    assert_same_weights(out, reference[0])


def test_resume_with_other_settings_is_refused(dataset, b0_small_dir, tmp_path):
    from effnet_cli import finetune

    out = tmp_path / "out"

    def stop(event):
        if event["event"] == "step":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(dataset), out, model=str(b0_small_dir), callback=stop, **TINY)
    done = run(["finetune", str(dataset), "-o", str(out), "--model", str(b0_small_dir),
                *_cli_args({**TINY, "lr": 0.5}), "--resume"])
    assert done.exit_code == 2
    assert "--lr" in done.stderr and "0.5" in done.stderr
    done = run(["finetune", str(dataset), "-o", str(out), "--model", str(b0_small_dir), *_cli_args(TINY)])
    assert done.exit_code == 2 and "--resume" in done.stderr  # a fresh run does not wipe the checkpoint


def test_resume_on_changed_data_is_refused(tmp_path, b0_small_dir):
    import shutil

    from effnet_cli import finetune

    data, out = make_dataset(tmp_path / "data"), tmp_path / "out"

    def stop(event):
        if event["event"] == "step":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(str(data), out, model=str(b0_small_dir), callback=stop, **TINY)
    shutil.copy(data / "red" / "img0.png", data / "red" / "new.png")
    done = _finetune_cli(data, out, b0_small_dir, "--resume")
    assert done.exit_code == 2 and "differ from those of the interrupted run" in done.stderr


# ------------------------------------------------------------ linear probe
def test_linear_probe_trains_only_the_classifier(dataset, b0_small_dir, tmp_path):
    from effnet_cli import finetune

    result = finetune(str(dataset), tmp_path / "probe", model=str(b0_small_dir), freeze="backbone",
                      epochs=5, workers=0, val_split=0.34)
    before, after = weights(b0_small_dir), weights(tmp_path / "probe")
    backbone = [k for k in after if not k.startswith("classifier.")]
    assert backbone and all((before[k] == after[k]).all() for k in backbone)
    assert after["classifier.weight"].shape == (3, before["classifier.weight"].shape[1])
    assert len(result.history) == 5
    assert not (tmp_path / "probe" / "features.pt").exists()


# ---------------------------------------------------------------- bad input
def _finetune_cli(data, out, b0_small_dir, *extra):
    return run(["finetune", str(data), "-o", str(out), "--model", str(b0_small_dir), *_cli_args(TINY), *extra])


def test_class_folder_without_a_usable_image_is_refused(tmp_path, b0_small_dir):
    data = make_dataset(tmp_path / "data")
    (data / "empty").mkdir()
    (data / "empty" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    done = _finetune_cli(data, tmp_path / "out", b0_small_dir)
    assert done.exit_code == 2
    assert "'empty'" in done.stderr and "no usable image" in done.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_one_class_is_refused(tmp_path, b0_small_dir):
    data = make_dataset(tmp_path / "data", classes={"red": COLOURS["red"]})
    done = _finetune_cli(data, tmp_path / "out", b0_small_dir)
    assert done.exit_code == 2 and "at least 2" in done.stderr
    assert not (tmp_path / "out").exists()


def test_csv_validation_label_absent_from_training_is_refused(tmp_path, b0_small_dir):
    data = make_dataset(tmp_path / "data")
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.glob("*/*.png"))]
    (data / "train.csv").write_text("path,label\n" + "\n".join(r for r in rows if not r.startswith("blue")) + "\n")
    (data / "val.csv").write_text("path,label\n" + "\n".join(rows[::3]) + "\n")
    done = _finetune_cli(data / "train.csv", tmp_path / "out", b0_small_dir, "--val", str(data / "val.csv"))
    assert done.exit_code == 2
    assert "'blue'" in done.stderr and "not a class of the training data" in done.stderr


def test_val_directory_with_other_classes_is_refused(tmp_path, b0_small_dir):
    data = make_dataset(tmp_path / "data")
    val = make_dataset(tmp_path / "val", classes={"red": COLOURS["red"], "green": COLOURS["green"]}, per_class=2)
    done = _finetune_cli(data, tmp_path / "out", b0_small_dir, "--val", str(val))
    assert done.exit_code == 2 and "'blue'" in done.stderr and "differ" in done.stderr


def test_output_dir_with_foreign_files_is_not_clobbered(dataset, tmp_path, b0_small_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("mine")
    done = _finetune_cli(dataset, out, b0_small_dir)
    assert done.exit_code == 2 and "did not write" in done.stderr
    assert (out / "config.json").read_text() == "mine"
    assert sorted(os.listdir(out)) == ["config.json"]


def test_csv_dataset_trains(tmp_path, b0_small_dir):
    data = make_dataset(tmp_path / "data")
    lines = [json.dumps({"path": str(p.relative_to(data)), "label": p.parent.name})
             for p in sorted(data.glob("*/*.png"))]
    (data / "list.jsonl").write_text("\n".join(lines) + "\n")
    done = _finetune_cli(data / "list.jsonl", tmp_path / "out", b0_small_dir, "--epochs", "1")
    assert done.exit_code == 0, done.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert sorted(config["label2id"]) == ["blue", "green", "red"]


def test_progress_shows_epochs_loss_accuracy_and_speed(dataset, tmp_path, b0_small_dir):
    done = _finetune_cli(dataset, tmp_path / "out", b0_small_dir, "--progress")
    assert done.exit_code == 0, done.stderr
    epochs = [line for line in done.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == TINY["epochs"], done.stderr
    assert all("loss" in line and "accuracy" in line and "images/s" in line for line in epochs)


def test_an_image_whose_read_hangs_in_an_epoch_is_left_out_at_the_limit(tmp_path, monkeypatch):
    """Each epoch decodes the files again; one that now hangs costs its place in the batch, not the run."""
    from PIL import Image

    import effnet_cli.data
    from effnet_cli.data import decode
    from effnet_cli.training.inputs import ImageSet, collate

    paths = []
    for i in range(2):
        Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    real = decode.open_image

    def hanging(path, **kwargs):
        if path.endswith("1.png"):
            # A read that blocks, as on a stale network mount; answered after 5 s, so that without the limit
            # the test fails instead of hanging.
            readable, writable = os.pipe()
            threading.Timer(5, os.write, (writable, b"x")).start()
            os.read(readable, 1)
        return real(path, **kwargs)

    monkeypatch.setattr(effnet_cli.data, "open_image", hanging)  # the name ImageSet imports
    import torch

    images = ImageSet(paths, [0, 1], lambda image: torch.zeros(3, 4, 4), {}, seed=0, epoch=0, time_limit=0.2)
    started = time.monotonic()
    x, y = collate([images[0], images[1]])
    assert time.monotonic() - started < 4
    assert x.shape == (1, 3, 4, 4) and y.tolist() == [0]


def test_max_pixels_and_decode_timeout_apply_to_finetune(tmp_path, b0_small_dir):
    """--max-pixels makes an image above it an unusable file, recorded like a broken one; bad values are usage errors."""
    from PIL import Image

    root = make_dataset(tmp_path / "data", per_class=3)
    Image.new("RGB", (100, 100), (200, 40, 40)).save(root / "red" / "large.png")  # 10,000 pixels; the rest 1,920
    out = tmp_path / "out"
    done = run(["finetune", str(root), "-o", str(out), "--model", str(b0_small_dir), "--freeze", "backbone",
                "--epochs", "1", "--val-split", "0", "--workers", "0", "--max-pixels", "5000",
                "--decode-timeout", "30", "-q"])
    assert done.exit_code == 0, done.stderr
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["large.png"] and "pixels" in errors[0]["error"]
    for bad, words in ((["--max-pixels", "0"], "--max-pixels must be positive"),
                       (["--decode-timeout", "-1"], "--decode-timeout must be 0")):
        refused = run(["finetune", str(root), "-o", str(tmp_path / "new"), *bad])
        assert refused.exit_code == 2 and words in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()

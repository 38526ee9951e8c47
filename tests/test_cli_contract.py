"""The command line's contract: errors the arguments alone decide come before any model, runtime or torch
import, as one line and exit status 2 on every command; one rule for existing outputs; ``classify -o``."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_helpers import run

# Runs the console script in a fresh interpreter, then says whether torch (or a runtime) was ever imported.
_PROBE = """
import sys
sys.argv = ["effnet", *sys.argv[1:]]
from effnet_cli.cli.app import main
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "onnxruntime", "openvino", "effnet_cli.core.model") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _effnet_light(*args: str, cwd: Path) -> tuple[int, list[str]]:
    """Exit status and stderr lines of a run, after asserting that no model-loading module was imported."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}, timeout=120)
    lines = proc.stderr.splitlines()
    assert lines and lines[-1] == "HEAVY:", f"a model-loading module was imported: {lines[-1:]}"
    assert proc.stdout == ""
    return proc.returncode, lines[:-1]


@pytest.fixture()
def place(tmp_path: Path, photos: list[Path]) -> Path:
    """A working directory with an image, an existing file, an empty and a non-empty directory."""
    (tmp_path / "cat.jpg").write_bytes(photos[0].read_bytes())
    (tmp_path / "feats.npy").write_bytes(b"not ours to replace")
    (tmp_path / "preds.jsonl").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    (tmp_path / "shards").mkdir()  # what finished --output-dir runs of classify and embed leave
    for name in ("pred_00000.jsonl", "_done_emb_00000.json"):
        (tmp_path / "shards" / name).write_text("{}\n")
    return tmp_path


@pytest.mark.parametrize(("args", "says"), [
    # the cases
    (["export", "lite0", "-o", "full"], "full already exists and is not empty; add --overwrite to replace it."),
    (["export", "lite0", "-o", "full", "--overwrite"], "holds files effnet did not write (notes.txt)"),
    (["export", "lite0", "-o", "new", "--dtype", "bfloat16"], "ONNX Runtime has no bfloat16"),
    (["embed", "cat.jpg"], "Give exactly one of -o FILE.npy, --per-file DIR or --output-dir DIR."),
    (["classify", "nope.jpg"], "nope.jpg: no such file or directory."),
    (["convert", "cat.jpg", "-o", "full"], "full already exists and is not empty; add --overwrite to replace it."),
    # existing outputs: the same refusal, naming the flags the command has
    (["embed", "cat.jpg", "-o", "feats.npy"], "feats.npy already exists; add --overwrite to replace it, "
                                              "or --resume to continue it."),
    (["classify", "cat.jpg", "-o", "preds.jsonl"], "preds.jsonl already exists; add --overwrite to replace it."),
    (["embed", "cat.jpg", "--per-file", "full"], "full already exists and is not empty; add --overwrite to replace it."),
    (["embed", "cat.jpg", "--per-file", "full", "--overwrite"], "holds files effnet did not write (notes.txt)"),
    (["convert", "cat.jpg", "-o", "full", "--overwrite"], "holds files effnet did not write (notes.txt)"),
    (["finetune", "empty", "-o", "full"], "full already holds files effnet did not write (notes.txt)"),
    # paths that do not exist, option combinations
    (["embed", "nope.jpg", "-o", "f.npy"], "nope.jpg: no such file or directory."),
    (["convert", "nope.pth", "-o", "new"], "nope.pth: no such file or directory."),
    (["finetune", "nope", "-o", "new"], "nope: no such directory or file."),
    (["export", "lite0", "-o", "new", "--verify", "nope"], "nope: no such file or directory."),
    (["classify", "cat.jpg", "--labels", "nope.txt"], "--labels nope.txt: no such file."),
    (["classify", "cat.jpg", "-o", "p.csv", "--format", "jsonl"], "names a .csv file but --format is jsonl"),
    (["classify", "cat.jpg", "-o", "p.json", "--output-dir", "d"], "Give -o FILE or --output-dir DIR, not both."),
    (["classify", "cat.jpg", "--overwrite"], "--overwrite replaces the file -o names"),
    # explain and the report pages
    (["explain", "cat.jpg", "-o", "full"], "full already exists and is not empty; add --overwrite to replace it."),
    (["explain", "cat.jpg", "-o", "new", "--method", "magic"], "--method must be one of gradcam, gradcam++"),
    (["classify", "cat.jpg", "--report", "p.html", "--output-dir", "d"], "--output-dir runs have none"),
    (["classify", "cat.jpg", "--report", "feats.npy"], "feats.npy already exists; add --overwrite to replace it."),
    (["dedupe", "cat.jpg", "--report", "feats.npy"], "feats.npy already exists; choose another --report."),
    (["embed", "cat.jpg", "-o", "cat.jpg/f.npy"], "cat.jpg is not a directory"),
    (["classify", "cat.jpg", "--output-dir", "shards"], "shards already holds shards of this run (pred_00000.jsonl); "
                                                        "add --resume to finish it"),
    (["embed", "cat.jpg", "--output-dir", "shards"], "shards already holds shards of this run (_done_emb_00000.json)"),
    # the similar-image commands
    (["index", "cat.jpg", "-o", "full"], "full already exists and is not empty; add --overwrite to replace it."),
    (["index", "cat.jpg", "-o", "full", "--overwrite"], "holds files effnet did not write (notes.txt)"),
    (["index", "cat.jpg", "-o", "feats.npy"], "feats.npy exists and is not a directory"),
    (["index", "nope.jpg", "-o", "new"], "nope.jpg: no such file or directory."),
    (["index", "cat.jpg", "-o", "new", "--features", "pixels"], "--features must be one of layout, head"),
    (["index", "cat.jpg", "-o", "new", "--backend", "openvino"], "--features layout runs the PyTorch model"),
    (["search", "cat.jpg", "--index", "full"], "full is not an effnet index (it has no index.json)"),
    (["search", "cat.jpg"], "Give the index to search with --index INDEX"),
    (["dedupe", "--index", "empty"], "empty is not an effnet index"),
    (["dedupe", "cat.jpg", "--index", "empty"], "Give images to compare or --index INDEX, one of the two."),
    (["dedupe", "cat.jpg", "--threshold", "1.5"], "--threshold is a cosine similarity between 0 and 1"),
])
def test_usage_errors_come_before_any_model_loads(place: Path, args: list[str], says: str) -> None:
    code, lines = _effnet_light(*args, cwd=place)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("effnet: ") and says in lines[0], lines
    assert (place / "feats.npy").read_bytes() == b"not ours to replace"  # nothing touched
    assert (place / "full" / "notes.txt").read_text() == "mine"


def test_a_suffix_is_added_and_said(place: Path) -> None:
    (place / "feats.npy").unlink()
    (place / "x.npy").write_bytes(b"")
    code, lines = _effnet_light("embed", "cat.jpg", "-o", "x", cwd=place)
    assert code == 2 and lines[0] == "effnet: writing x.npy (-o names a .npy file)"
    assert "x.npy already exists" in lines[1]


def test_a_typo_of_a_command_ends_with_one_mark() -> None:
    res = run(["clasify"])
    assert res.exit_code == 2 and res.stderr.splitlines()[0] == "effnet: No such command 'clasify'. Did you mean 'classify'?"


def test_help_names_values_as_a_user_would(place: Path) -> None:
    text = "".join(run([command, "--help"]).stdout for command in ("classify", "embed", "convert", "export", "finetune", "explain",
                                                                   "index", "search", "dedupe"))
    assert not re.search(r"<(str|int|float|path|list\[str\])( range)?>", text), text
    assert "MODEL" in text and "IMAGES" in text


def test_classify_o_writes_what_stdout_would_once(b0_small_dir: Path, photos: list[Path], tmp_path: Path) -> None:
    # One backend for all three runs: the first run of a model under auto exports it, and later runs take
    # the export's torch-free path, whose scores may differ in the last float32 digits.
    args = ["classify", *map(str, photos[:2]), "--model", str(b0_small_dir), "-j", "0", "-q", "--backend", "torch"]
    stdout = run([*args, "-f", "jsonl"]).stdout
    out = tmp_path / "preds.jsonl"
    first = run([*args, "-o", str(out)])
    assert first.exit_code == 0 and first.stdout == "" and out.read_text() == stdout
    assert [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"]  # no temporary or lock left behind
    again = run([*args, "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr and out.read_text() == stdout
    csv = run([*args, "-o", str(tmp_path / "preds"), "--format", "csv"])
    assert csv.exit_code == 0 and (tmp_path / "preds.csv").read_text().startswith("path,")
    replaced = run([*args, "-o", str(out), "--overwrite", "-k", "1"])
    assert replaced.exit_code == 0 and len(json.loads(out.read_text().splitlines()[0])["predictions"]) == 1


def test_a_top_k_above_the_classes_is_lowered_and_said(b0_small_dir: Path, photos: list[Path]) -> None:
    res = run(["classify", str(photos[0]), "--model", str(b0_small_dir), "-j", "0", "-k", "2000", "-f", "jsonl"])
    classes = json.loads((b0_small_dir / "config.json").read_text()).get("num_labels") or len(
        json.loads((b0_small_dir / "config.json").read_text())["id2label"])
    assert res.exit_code == 0
    assert f"effnet: --top-k 2000 is more than the model's {classes} classes; giving {classes} per image" in res.stderr


def test_classify_o_is_refused_while_another_run_writes_it(place: Path) -> None:
    from effnet_cli.output import OutputLock

    with OutputLock(place / ".p.jsonl.lock", place / "p.jsonl"):
        res = subprocess.run([sys.executable, "-m", "effnet_cli", "classify", "cat.jpg", "-o", "p.jsonl"],
                             capture_output=True, text=True, cwd=place, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert res.returncode == 2 and res.stdout == "" and "p.jsonl" in res.stderr and "Traceback" not in res.stderr
    assert not (place / "p.jsonl").exists()


def test_the_offline_hint_keeps_the_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    from effnet_cli.errors import OfflineError
    from effnet_cli.weights.resolve import resolve_files

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"`hf download google/efficientnet-b0 --revision v1\.0`"):
        resolve_files("google/efficientnet-b0", revision="v1.0")


def test_a_command_loads_only_its_own_module():
    """`effnet classify` imports no other command's module: each costs start-up time a short run pays."""
    script = ("import sys\nsys.argv = ['effnet', 'classify', '--help']\nfrom effnet_cli.cli.app import main\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.startswith('effnet_cli.cli.')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0 and "--top-k" in done.stdout, done.stderr
    loaded = set(eval(done.stderr.strip().splitlines()[-1]))
    others = {f"effnet_cli.cli.{name}" for name in ("embed", "convert", "export", "finetune", "similar", "dedupe",
                                                    "explain", "config_cmd")}
    assert "effnet_cli.cli.classify" in loaded and not loaded & others, loaded & others
    # The help screen and a misspelt command still see every command.
    listing = subprocess.run([sys.executable, "-m", "effnet_cli", "clasify"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert listing.returncode == 2 and "Did you mean 'classify'" in listing.stderr

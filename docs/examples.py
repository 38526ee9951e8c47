"""Run the command examples shown in README.md and docs/*.md and write their real output into the docs.

An example is a fenced block right after an ``<!-- example -->`` comment. Its lines that start
with ``$ `` are commands; everything else in the block is their output, which this script
replaces by what the commands print now (stdout and stderr together, as a terminal shows them)::

    <!-- example -->
    ```
    $ effnet classify tests/data/images/cat.jpg -k 1 -f csv
    path,rank,index,label,score,error
    ...
    ```

A command may span lines with a here-document: the lines after ``$ python - <<'EOF'`` up to the
line ``EOF`` belong to the command (shown as typed), not to its output.

``<!-- example: setup COMMAND -->`` runs COMMAND first without showing it (to make a broken
file, say). ``<!-- example: image SOURCE TARGET -->`` (after a setup, if any) also keeps a picture the
commands made: SOURCE, a file the block wrote, is copied to TARGET in this checkout (a PNG), or, when it
is an HTML page, photographed there by headless Chromium (1200×800), so the docs show the pictures the
same code makes; ``--check`` only checks that SOURCE is still written and TARGET exists. The commands of one block run one after another in the same fresh directory, in
which ``tests/data/images`` holds the sample photos; effnet runs from this checkout, offline
(the bundled lite0 weights), with a 100-column terminal width and no colour. Timings are shown
as ``N.N s`` and the temporary directory as ``.``, so that a second run writes the same text.

    python docs/examples.py           # rewrite every example block
    python docs/examples.py --check   # exit 1, with a diff, when a shown output no longer matches

Blocks run side by side, one per usable core (``--jobs N`` to change that).

``--check`` compares numbers to the precision the docs show (and within 1e-5 relative for long
ones, which differ in their last digits between machines); all other text must match exactly.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- example(?::\s*(?:setup\s+(?P<setup>.*?))?(?:\s*image\s+(?P<source>\S+)\s+(?P<target>\S+))?)?"
                    r"\s*-->\s*$")
SCREEN = (1200, 800)  # the browser window a report page is photographed in
TIMING = re.compile(r"\bin \d+(?:\.\d+)? s\b")
# The build tag of a version (torch 2.14.1+cu130, +cpu): which wheel is installed, not what effnet does.
BUILD_TAG = re.compile(r"(\b\d+\.\d+(?:\.\d+)?)\+(?:cu\d+|cpu|rocm[\d.]+)\b")
HEREDOC = re.compile(r"""<<-?\s*(['"]?)(?P<word>\w+)\1""")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
TIMEOUT = 600  # seconds per command; a conversion with --verify takes tens of seconds on a busy machine


@dataclass
class Example:
    """One generated block: where it is, what to run, and what the docs show now."""

    path: Path
    start: int  # index of the line after the opening fence
    end: int  # index of the closing fence
    setup: str | None
    commands: list[str]
    shown: str
    image: tuple[str, str] | None = None  # (file the block writes, picture in the docs it becomes)


def doc_files() -> list[Path]:
    """README.md and every page under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def find_examples(path: Path) -> list[Example]:
    """The marked blocks of one Markdown file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            start = i + 2
            end = next((j for j in range(start, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise SystemExit(f"{path.relative_to(REPO)}:{i + 1}: example block is never closed")
            body = lines[start:end]
            commands = commands_of(body)
            if not commands:
                raise SystemExit(f"{path.relative_to(REPO)}:{i + 1}: example block has no '$ ' command")
            image = (marker.group("source"), marker.group("target")) if marker.group("source") else None
            found.append(Example(path, start, end, marker.group("setup"), commands, "\n".join(body), image))
            i = end
        i += 1
    return found


def commands_of(body: list[str]) -> list[str]:
    """The commands of a block: its ``$ `` lines, each with the here-document that follows it."""
    commands = []
    i = 0
    while i < len(body):
        if body[i].startswith("$ "):
            command = [body[i][2:]]
            heredoc = HEREDOC.search(body[i])
            if heredoc:  # the document's lines, through its terminator, are part of the command
                while i + 1 < len(body) and command[-1] != heredoc.group("word"):
                    i += 1
                    command.append(body[i])
            commands.append("\n".join(command))
        i += 1
    return commands


def environment(bin_dir: Path, cache: Path, home: Path) -> dict[str, str]:
    """effnet from this checkout, offline, as a plain 100-column terminal would show it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "EFFNET_", "PYTEST_"))}
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        "PYTHONUNBUFFERED": "1",  # stdout and stderr interleave as on a terminal
        "EFFNET_CACHE": str(cache),
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' loading bar shows a rate that changes every run
        "COLUMNS": "100",
        "NO_COLOR": "1",
        "TERM": "dumb",
    })
    return env


def run_example(example: Example, env: dict[str, str], keep_image: bool = True) -> str:
    """The block's text as the commands print it now, masked; its picture kept (``keep_image``) or checked."""
    with tempfile.TemporaryDirectory(prefix="effnet-example-") as tmp:
        work = Path(tmp)
        shutil.copytree(REPO / "tests" / "data" / "images", work / "tests" / "data" / "images")
        if example.setup:
            subprocess.run(["bash", "-c", example.setup], cwd=work, env=env, check=True, timeout=TIMEOUT,
                           capture_output=True)
        out = []
        for command in example.commands:
            proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=TIMEOUT)
            text = proc.stdout.decode("utf-8", errors="replace").replace(str(work.resolve()), ".")
            text = text.replace(str(work), ".")
            out.append(f"$ {command}")
            out.extend(line.rstrip() for line in text.rstrip("\n").split("\n") if text.strip())
        if example.image is not None:
            out.extend(picture(work / example.image[0], REPO / example.image[1], env, keep_image))
    return "\n".join(BUILD_TAG.sub(r"\1", TIMING.sub("in N.N s", line)) for line in out)


def picture(source: Path, target: Path, env: dict[str, str], keep: bool) -> list[str]:
    """Copy (a PNG) or photograph (an HTML page) ``source`` to ``target``; lines for the block when that fails."""
    if not source.is_file():
        return [f"(the picture's source {source.name} was not written)"]
    if not keep:
        return [] if target.is_file() else [f"({os.path.relpath(target, REPO)} is missing: run docs/examples.py)"]
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix.lower() != ".html":
        shutil.copyfile(source, target)
        return []
    browser = next((found for name in ("chromium", "chromium-browser", "google-chrome")
                    if (found := shutil.which(name))), None)
    if browser is None:
        return ["(no headless Chromium to photograph the page: apt-get install chromium)"]
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={SCREEN[0]},{SCREEN[1]}", "--virtual-time-budget=3000",
                    f"--screenshot={target}", source.as_uri()], env=env, capture_output=True, timeout=TIMEOUT,
                   check=True)
    return []


def same(shown: str, now: str) -> bool:
    """Equal text, with each number equal to the precision the docs show it with."""
    split_shown, split_now = NUMBER.split(shown), NUMBER.split(now)
    if split_shown != split_now:
        return False
    for a, b in zip(NUMBER.findall(shown), NUMBER.findall(now)):
        decimals = len(a.split(".")[1]) if "." in a and "e" not in a.lower() else 0
        x, y = float(a), float(b)
        if abs(x - y) > 10.0**-decimals / 2 + 1e-12 and abs(x - y) > 1e-5 * max(abs(x), abs(y)):
            return False
    return True


def shim(bin_dir: Path) -> None:
    """An ``effnet`` command that runs this checkout with this interpreter."""
    script = bin_dir / "effnet"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m effnet_cli "$@"\n', encoding="utf-8")
    script.chmod(0o755)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the example blocks, or with --check report the ones that no longer match."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of rewriting; exit 1 on a difference")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("-j", "--jobs", type=int, default=cores,
                        help="blocks run at once (default: the usable cores)")
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    files = [f.resolve() for f in args.files] or doc_files()
    examples = {path: find_examples(path) for path in files}
    stale = 0
    with tempfile.TemporaryDirectory(prefix="effnet-docs-") as tmp:
        root = Path(tmp)
        for name in ("bin", "cache", "hf"):
            (root / name).mkdir()
        shim(root / "bin")
        env = environment(root / "bin", root / "cache", root / "hf")
        # The bundled model's export cached first, as on any machine after its first run (the first short
        # run exports it once and says so): which block ran first must not change what the blocks show.
        photo = REPO / "tests" / "data" / "images" / "cat.jpg"
        subprocess.run([sys.executable, "-m", "effnet_cli", "classify", str(photo), "-q"], env=env,
                       capture_output=True, check=False)
        # Blocks are independent (each has its own directory; effnet's caches are safe to share),
        # and most of a block's time is spent importing torch, so they run side by side.
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs = {(path, ex.start): pool.submit(run_example, ex, env, not args.check)
                    for path in files for ex in examples[path]}
            for path in files:
                if not examples[path]:
                    continue
                lines = path.read_text(encoding="utf-8").split("\n")
                for example in reversed(examples[path]):  # from the end, so earlier line numbers stay valid
                    now = runs[path, example.start].result()
                    where = f"{path.relative_to(REPO)}:{example.start}"
                    if args.check:
                        if not same(example.shown, now):
                            stale += 1
                            diff = difflib.unified_diff(example.shown.split("\n"), now.split("\n"), "shown", "now",
                                                        lineterm="")
                            print(f"{where}: the shown output differs from a real run:", *diff, sep="\n")
                    elif example.shown != now:
                        lines[example.start:example.end] = now.split("\n")
                        print(f"{where}: rewritten")
                if not args.check:
                    path.write_text("\n".join(lines), encoding="utf-8")
    if args.check:
        print(f"{stale} example block(s) differ" if stale else "every example block matches a real run")
    return 1 if stale else 0


if __name__ == "__main__":
    shutil.which("bash") or sys.exit("docs/examples.py needs bash")
    sys.exit(main())

"""Running the command line in tests: in-process (Typer's runner) and as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from typer.testing import CliRunner

from effnet_cli.cli.app import app
from effnet_cli.cli.render import run_app


class Outcome:
    """Exit code and captured streams of one in-process run."""

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


def run(args: list[str], input: str | bytes | None = None) -> Outcome:
    """Run the app in-process as the console script does (our error handling included)."""
    runner = CliRunner()
    with runner.isolation(input=input) as (out, err, _mixed):
        code = run_app(app, args)
        sys.stdout.flush()
        sys.stderr.flush()
        return Outcome(code, out.getvalue().decode(), err.getvalue().decode())


def default_sigint() -> None:
    """``preexec_fn`` for a child that must react to Ctrl-C as one started from a terminal does.

    An ignored SIGINT is inherited across exec (that is how ``nohup`` and ``&`` jobs work), and the
    test process may have inherited or been left with one; Python then never raises
    KeyboardInterrupt in the child.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def effnet(*args: str, stdin: bytes | None = None, env: dict | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m effnet_cli`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "effnet_cli", *args], input=stdin, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def read_terminal(leader: int) -> bytes:
    """Everything a child wrote to a pseudo-terminal, until it closed its side."""
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)

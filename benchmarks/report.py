"""Markdown for docs/benchmarks.md from the numbers benchmarks/run.py measured.

    python benchmarks/report.py benchmarks/out/results.json --out docs/benchmarks.md

renders the page again from a run's JSON (``run.py --json``) without measuring anything.
The page is benchmarks/report_template.md, whose placeholders this fills: the run and the
machine, the targets table (benchmarks/report_targets.py) and the sections that depend on
what was measured (benchmarks/report_tables.py, one function per section). The prose
that does not depend on the numbers (what each optimisation does, the ``optimize()`` API,
the method) is in the template, so a re-run rewrites the whole page consistently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from string import Template
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the report's modules sit beside it, whoever imports it
    sys.path.insert(0, str(HERE))

import report_tables as tables  # noqa: E402
from report_format import table  # noqa: E402
from report_targets import targets  # noqa: E402

TEMPLATE = HERE / "report_template.md"
# The sections between the targets and the prose, in page order; each returns its lines, or none.
SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    tables.notes_section, tables.auto_section, tables.ratios_section, tables.forward_section, tables.e2e_section,
    tables.sustained_section, tables.loaded_section, tables.backend_memory_section, tables.draft_section,
    tables.bf16_section, tables.cli_section, tables.ablation_section,
)


def _flags(results: dict[str, Any]) -> str:
    """The warnings after the run's sentence: quick mode, a shared machine."""
    return ((" **Quick mode: iteration counts too small to quote.**" if results.get("quick") else "")
            + (" **Shared machine (--shared): other programs ran during the measurements; indicative figures only.**"
               if results.get("shared") else ""))


def render(results: dict[str, Any]) -> str:
    """The whole page for one run's results."""
    sections = [line for section in SECTIONS for line in section(results)]
    return Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        results["machine"],
        command=results.get("command", "python benchmarks/run.py --out docs/benchmarks.md"),
        started=results.get("started", "?"), minutes=f"{results.get('minutes', 0):.0f}",
        load_start=results.get("load_start"), load_end=results.get("load_end"), flags=_flags(results),
        targets="\n".join(table(("target", "measured", ""), "lll", targets(results))),
        sections="".join(line + "\n" for line in sections),
        footer="".join("\n\n" + paragraph for paragraph in tables.footer_paragraphs(results)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the JSON that `run.py --json` wrote")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: stdout)")
    args = parser.parse_args(argv)
    text = render(json.loads(args.results.read_text(encoding="utf-8")))
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Markdown for docs/benchmarks.md from the numbers benchmarks/run.py measured.

The tables are generated; the prose around them (what each optimisation does,
the ``optimize()`` API, the method) lives here, so a re-run rewrites the whole
page consistently.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

LIB_LABELS = {
    "effnet": "effnet `optimize(keep_freed_memory=False)` (glibc's default allocator behaviour)",
    "effnet-engine": "effnet `optimize()` — what `effnet classify --backend torch` runs",
    "effnet-engine-bf16": "effnet `optimize(dtype=bfloat16)`",
    "effnet-auto": "effnet's default backend: `Engine(backend=\"auto\", batch_size=N)`, as `effnet classify` runs it",
    "effnet-auto-bf16": "effnet's default backend in bfloat16: `Engine(backend=\"auto\", dtype=\"bfloat16\", "
                        "batch_size=N)`",
    "onnxruntime": "ONNX Runtime used directly (ORT_ENABLE_ALL, threads = cores)",
    "openvino": "OpenVINO used directly (float32, THROUGHPUT/LATENCY hint, async requests)",
    "openvino-bf16": "OpenVINO used directly, bfloat16 inference precision",
    "torchvision": "torchvision `efficientnet_*`, channels-last, eager",
    "timm": "timm, channels-last, eager",
    "transformers": "transformers `EfficientNetForImageClassification`",
}
E2E_LABELS = {
    "effnet": "`effnet classify` (the CLI, jsonl to a pipe; default backend `auto`)",
    "effnet-torch": "`effnet classify --backend torch`",
    "effnet-onnxruntime": "`effnet classify --backend onnxruntime`",
    "effnet-openvino": "`effnet classify --backend openvino`",
    "onnxruntime": "ONNX Runtime used directly (effnet's processor + DataLoader)",
    "openvino": "OpenVINO used directly (effnet's processor + DataLoader)",
    "transformers": "transformers `pipeline(\"image-classification\")`, `num_workers=2`",
    "timm": "timm (`resolve_data_config` + `create_transform` + DataLoader)",
    "torchvision": "torchvision (weights' `transforms()` + DataLoader)",
}
TIMM_ARCH = {"b0": "efficientnet_b0", "b7": "tf_efficientnet_b7"}


def _f(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}×"


def _forward_lookup(rows: list[dict[str, Any]], variant: str, batch: int, lib: str) -> float | None:
    for row in rows:
        if row["variant"] == variant and row["batch"] == batch and row["lib"] == lib:
            return row["images_per_s"]
    return None


def _e2e_lookup(rows: list[dict[str, Any]], variant: str, lib: str) -> float | None:
    for row in rows:
        if row["variant"] == variant and row["lib"] == lib:
            return row["steady_images_per_s"]
    return None


def _table(titles: Sequence[str], align: str, rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table: one ``align`` letter per column, ``l`` (left) or ``r`` (right)."""
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(titles), line("---:" if a == "r" else "---" for a in align), *(line(row) for row in rows)]


def _pct(a: float | None, b: float | None) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{100 * a / b:.0f}%"


def _check(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def sustained_share(sustained: dict[str, Any] | None, variant: str) -> tuple[float, list[float]] | None:
    """(median, per pair) of the CLI's steady-state images/s over its default backend's forward images/s."""
    if not sustained:
        return None
    pairs = sustained["pairs"] if variant == "b0" else [sustained.get(variant, {})]
    shares = [p["classify"] / p["forward"] for p in pairs
              if p.get("forward") and p.get("classify") and not math.isnan(p["classify"])]
    return (statistics.median(shares), shares) if shares else None


def _ratio_row(ratios: list[dict[str, Any]], name: str, **where: Any) -> dict[str, Any] | None:
    for r in ratios:
        if r["name"] == name and all(r.get(k) == v for k, v in where.items()) and r.get("median") is not None:
            return r
    return None


def _rounds(r: dict[str, Any]) -> str:
    runs = r["per_round"]
    return f"{r['median']:.2f}×" + (f" (median of {len(runs)} rounds: {', '.join(f'{x:.2f}' for x in runs)})"
                                    if len(runs) > 1 else " (one round)")


def _e2e_rss(e2e: list[dict[str, Any]], lib: str) -> float | None:
    for row in e2e:
        if row["variant"] == "b0" and row["lib"] == lib:
            return row["peak_rss_mb"]
    return None


def prepare_samples() -> list[Any]:
    """The sample photos (the names a flip list is checked against)."""
    import prepare

    return sorted(prepare.SAMPLES.glob("*.jpg"))


def speed_targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each "must be true" line of the backends work: medians of per-round ratios."""
    fr = results.get("forward_ratios", [])
    er = results.get("e2e_ratios", [])
    out = []
    best = "default ÷ best(ONNX Runtime, OpenVINO)"
    for batch in (1, 16):
        r = _ratio_row(fr, best, batch=batch)
        out.append(((f"forward b0/224, float32, batch {batch}: the default backend ≥ 1.0× the best of ONNX Runtime "
                     "and OpenVINO used directly"), _rounds(r) if r else "–", _check(r["median"] >= 1.0) if r else "–"))
    r = _ratio_row(fr, "default ÷ --backend torch", batch=1)
    out.append(("forward b0/224, float32, batch 1: the default backend ≥ 2.5× `--backend torch`",
                _rounds(r) if r else "–", _check(r["median"] >= 2.5) if r else "–"))
    bf = [_ratio_row(fr, "default bf16 ÷ OpenVINO bf16", batch=b) for b in (1, 16)]
    bf = [r for r in bf if r]
    out.append(("forward b0/224 in bfloat16: the default backend ≥ 1.0× OpenVINO bf16 used directly",
                "; ".join(f"batch {r['batch']}: {_rounds(r)}" for r in bf) or "–",
                _check(all(r["median"] >= 1.0 for r in bf)) if bf else "–"))
    agreement = [row for row in (results.get("bf16") or {}).get("rows", []) if row["dtype"] == "bfloat16"
                 and not row["backend"].endswith("-direct")]
    samples = {path.name for path in prepare_samples()}
    out.append(("bfloat16 (every backend that has it): top-1 equal to float32 on the sample photos and on ≥ 99% of "
                "the camera-sized JPEGs",
                "; ".join(f"{row['backend']} {row['equal']}/{row['total']} ({100 * row['equal'] / row['total']:.1f}%)"
                          + (", sample photos all equal" if not any(f["image"] in samples for f in row["flips"])
                             else ", a sample photo flipped") for row in agreement) or "–",
                _check(all(row["equal"] >= 0.99 * row["total"] and not any(f["image"] in samples for f in row["flips"])
                           for row in agreement)) if agreement else "–"))
    for name, label, need in (("default ÷ --backend torch", "`effnet classify --backend torch`", 1.5),
                              ("default ÷ transformers pipeline", "the transformers pipeline (`num_workers=2`)", 5.0)):
        r = _ratio_row(er, name, variant="b0")
        out.append(((f"end to end b0, {r['images'] if r else 1024:,} camera JPEG paths → top-5, steady state, "
                     f"batch 16: `effnet classify` ≥ {need:g}× {label}"), _rounds(r) if r else "–",
                    _check(r["median"] >= need) if r else "–"))
    r = _ratio_row(er, "default ÷ --backend torch", variant="b7")
    out.append(("end to end b7: `effnet classify` ≥ 1.3× `--backend torch`", _rounds(r) if r else "–",
                _check(r["median"] >= 1.3) if r else "–"))
    loaded = results.get("loaded")
    for busy, need in ((1, 0.40), (2, 0.25)):
        row = next((x for x in (loaded or {}).get("rows", []) if x["lib"] == "effnet" and x["busy"] == busy), None)
        share = row.get("share") if row else None
        which = "a busy process pinned to one core" if busy == 1 else "one pinned to each core"
        out.append((f"`effnet classify` with {which}: ≥ {need:.0%} of its unloaded steady state",
                    (f"{share:.0%} ({_f(row['images_per_s'])} images/s; rounds: "
                     f"{', '.join(f'{x:.0%}' for x in row['share_per_round'])})") if share is not None else "–",
                    _check(share >= need) if share is not None else "–"))
    rss = {lib: _e2e_rss(results.get("e2e", []), lib) for lib in ("effnet", "effnet-torch", "effnet-onnxruntime",
                                                                   "effnet-openvino")}
    if rss["effnet"] is not None:
        out.append(("peak RSS of the main process of `effnet classify` b0 ≤ 500 MB",
                    f"{rss['effnet']:.0f} MB (default); " + ", ".join(
                        f"{lib.removeprefix('effnet-')} {v:.0f} MB" for lib, v in rss.items()
                        if v is not None and lib != "effnet"),
                    _check(rss["effnet"] <= 500)))
    else:
        out.append(("peak RSS of the main process of `effnet classify` b0 ≤ 500 MB", "–", "–"))
    return out


def why_not_met(results: dict[str, Any]) -> list[str]:
    """One or two sentences per unmet speed target, computed from this run's numbers."""
    fwd = results.get("forward", [])
    fr = results.get("forward_ratios", [])
    er = results.get("e2e_ratios", [])
    auto = (results.get("auto") or {}).get("b0", {})
    notes = []
    for batch in (1, 16):
        r = _ratio_row(fr, "default ÷ best(ONNX Runtime, OpenVINO)", batch=batch)
        if r and r["median"] < 1.0:
            choice = auto.get(f"float32/{batch}", {}).get("backend", "?")
            notes.append(f"Forward at batch {batch}: the default backend ran {choice} (auto's choice in this run) and "
                         f"reached {r['median']:.2f}× the faster runtime used directly (rounds "
                         f"{min(r['per_round']):.2f}–{max(r['per_round']):.2f}): what is left is the wrapping around "
                         "the runtime (the input handed over as numpy, the outputs copied back), or auto's short "
                         "probe ranking the runtimes differently from the longer timed runs.")
    r = _ratio_row(fr, "default ÷ --backend torch", batch=1)
    if r and r["median"] < 2.5:
        torch1 = _forward_lookup(fwd, "b0", 1, "effnet-engine")
        best1 = max(filter(None, (_forward_lookup(fwd, "b0", 1, lib) for lib in ("onnxruntime", "openvino"))),
                    default=None)
        if torch1 and best1:
            notes.append(f"Forward at batch 1 against `--backend torch`: on this CPU the fastest runtime used directly "
                         f"is itself only {best1 / torch1:.2f}× `optimize()` ({best1:.0f} against {torch1:.0f} images/s), "
                         "so no choice of backend reaches 2.5× here; the issue's 2.9–3.4× was an Intel Xeon with AMX.")
    for batch in (1, 16):
        r = _ratio_row(fr, "default bf16 ÷ OpenVINO bf16", batch=batch)
        if r and r["median"] < 1.0:
            choice = auto.get(f"bfloat16/{batch}", {}).get("backend", "?")
            notes.append(f"bfloat16 forward at batch {batch}: the default backend ran {choice} and reached "
                         f"{r['median']:.2f}× OpenVINO bf16 used directly. effnet keeps the stem and the first "
                         "stage in float32 so that bfloat16 keeps ≥ 99% of float32's top-1 classes (the agreement "
                         "table below); OpenVINO used directly runs every layer in bfloat16 and agrees less often.")
    sus = results.get("sustained") or {}
    pairs = [x for x in sus.get("pairs", []) if x.get("forward") and x.get("decode")]
    r = _ratio_row(er, "default ÷ --backend torch", variant="b0")
    if r and r["median"] < 1.5:
        f_auto = _forward_lookup(fwd, "b0", 16, "effnet-auto")
        f_torch = _forward_lookup(fwd, "b0", 16, "effnet-engine")
        decode = statistics.median(x["decode"] for x in pairs) if pairs else None
        if f_auto and f_torch and decode:
            ceil_a, ceil_t = 1 / (1 / f_auto + 1 / decode), 1 / (1 / f_torch + 1 / decode)
            notes.append(f"End to end against `--backend torch`: decoding and the model share the 2 cores, so the "
                         f"ceiling is 1/(1/forward + 1/decode): with decode at {decode:.0f} images/s, "
                         f"{ceil_a:.0f} images/s for the default's forward ({f_auto:.0f}) against {ceil_t:.0f} for "
                         f"torch's ({f_torch:.0f}): at most {ceil_a / ceil_t:.2f}×, whatever the backend.")
        else:
            notes.append(f"End to end against `--backend torch`: {r['median']:.2f}×; decoding and the model share the "
                         "2 cores, so a faster forward gains only part of its speed-up end to end.")
    r = _ratio_row(er, "default ÷ transformers pipeline", variant="b0")
    if r and r["median"] < 5.0:
        ours = _e2e_lookup(results.get("e2e", []), "b0", "effnet")
        pipe = _e2e_lookup(results.get("e2e", []), "b0", "transformers")
        notes.append(f"End to end against the transformers pipeline: with `num_workers=2` the pipeline decodes in "
                     f"parallel too ({_f(pipe)} images/s against effnet's {_f(ours)}); effnet's lead is then its "
                     "forward and its cheaper draft decode, bounded by the same decode-plus-forward ceiling.")
    r = _ratio_row(er, "default ÷ --backend torch", variant="b7")
    if r and r["median"] < 1.3:
        a7 = _forward_lookup(fwd, "b7", 16, "effnet-auto")
        t7 = _forward_lookup(fwd, "b7", 16, "effnet-engine")
        c7 = ((results.get("auto") or {}).get("b7") or {}).get("float32/16") or {}
        probe = ", ".join(f"{b} {v:.2f}" for b, v in (c7.get("measured") or {}).items())
        notes.append(f"b7 end to end against `--backend torch` ({r['median']:.2f}×): b7 is all model, so end to end "
                     "follows the forward"
                     + (f", where the default backend is {a7 / t7:.2f}× torch at batch 16 here" if a7 and t7 else "")
                     + (f"; auto chose {c7['backend']} from its short probe ({probe} images/s), which the longer "
                        "timed run did not bear out" if c7.get("backend") and c7["backend"] != "torch" else "")
                     + ".")
    loaded = results.get("loaded") or {}
    for row in loaded.get("rows", []):
        need = {1: 0.40, 2: 0.25}.get(row["busy"])
        if row["lib"] == "effnet" and need and row.get("share") is not None and row["share"] < need:
            notes.append(f"Under load ({row['load']}): {row['share']:.0%} of the unloaded rate; each busy process "
                         "takes a core's worth of time slices from the model's threads and the decode workers alike.")
    rss = _e2e_rss(results.get("e2e", []), "effnet")
    if rss is not None and rss > 500:
        base = results.get("import_torch_rss_mb")
        notes.append(f"Memory: the main process peaks at {rss:.0f} MB"
                     + (f"; `import torch` alone is {base:.0f} MB here" if base else "")
                     + ", and the CLI imports torch with every backend (the decode pipeline hands batches over as "
                     "tensors), so 500 MB is out of reach until the runtimes' path avoids torch.")
    return notes


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    fwd = results.get("forward", [])
    e2e = results.get("e2e", [])
    out = speed_targets(results)
    opt = _forward_lookup(fwd, "b0", 16, "effnet")
    eng = _forward_lookup(fwd, "b0", 16, "effnet-engine")
    tv = _forward_lookup(fwd, "b0", 16, "torchvision")
    hf = _forward_lookup(fwd, "b0", 16, "transformers")
    for name, other, need in (("torchvision channels-last", tv, 1.3), ("transformers", hf, 3.0)):
        if eng and other:
            out.append((f"forward b0/224/16: effnet ≥ {need:g}× {name}",
                        f"`optimize()` {eng / other:.2f}×" + (f" (with glibc's default allocator behaviour: "
                                                              f"{opt / other:.2f}×)" if opt else ""),
                        _check(eng / other >= need)))
    for variant, need in (("b0", None), ("b7", 2.0)):
        ours = _e2e_lookup(e2e, variant, "effnet")
        pipe = _e2e_lookup(e2e, variant, "transformers")
        if ours and pipe and need:  # b0 against the pipeline: the 5× line above
            out.append((f"end to end {variant}: `effnet classify` ≥ {need:g}× the pipeline", f"{ours / pipe:.2f}×",
                        _check(ours / pipe >= need)))
        share = sustained_share(results.get("sustained"), variant)
        if share is not None:
            median, shares = share
            out.append((f"end to end {variant}: ≥ 80% of effnet's own forward (default backend, batch 16), steady state",
                        f"{100 * median:.0f}%" + (f" (median of pairs: {', '.join(f'{100 * x:.0f}%' for x in shares)})"
                                                   if len(shares) > 1 else ""),
                        _check(median >= 0.8)))
    cli = results.get("cli")
    if cli:
        out.append(("`effnet --help` < 0.3 s", f"{cli['help_median_s']:.3f} s (median of {len(cli['help_runs_s'])})",
                    _check(cli["help_median_s"] < 0.3)))
        mem = cli.get("memory", [])
        if len(mem) == 2:
            a, b = mem
            growth = b["peak_tree_pss_mb"] / a["peak_tree_pss_mb"] - 1
            out.append((f"`effnet classify` memory flat from {a['files']:,} to {b['files']:,} files",
                        f"peak {a['peak_rss_mb']:.0f} → {b['peak_rss_mb']:.0f} MB (main process), "
                        f"{a['peak_tree_pss_mb']:.0f} → {b['peak_tree_pss_mb']:.0f} MB (all processes)",
                        _check(abs(growth) < 0.10 and a["ok"] and b["ok"])))
    return out


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines: list[str] = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add("<!-- Generated by benchmarks/run.py (prose in benchmarks/report.py); re-run it instead of editing. -->")
    add("")
    add("How fast effnet is against the libraries it is measured against, on one machine in one run, with the same")
    add("weights loaded into every library, and what each of its optimisations is worth. Reproduce with")
    add("")
    add("```")
    add(results.get("command", "python benchmarks/run.py --out docs/benchmarks.md"))
    add("```")
    add("")
    add("(needs the `test` extra for transformers and timm; downloads nothing; writes its weights to "
        "`benchmarks/out/` and its images to `benchmarks/data/`, both git-ignored). This run: "
        f"{results.get('started', '?')}, {results.get('minutes', 0):.0f} minutes, load average "
        f"{results.get('load_start')} at the start and {results.get('load_end')} at the end (1, 5, 15 min)."
        + (" **Quick mode: iteration counts too small to quote.**" if results.get("quick") else "")
        + (" **Shared machine (--shared): other programs ran during the measurements; indicative figures only.**"
           if results.get("shared") else ""))
    add("")
    add("## Machine")
    add("")
    add(f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; no GPU. Python {m['python']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads), torchvision {m['torchvision']}, transformers "
        f"{m['transformers']}, timm {m['timm']}, Pillow {m['pillow']}, numpy {m['numpy']}; effnet {m['effnet']} "
        f"at commit {m['commit']}.")
    add("")
    add("## Targets")
    add("")
    lines.extend(_table(("target", "measured", ""), "lll", targets(results)))
    add("")
    add("Ratios are taken within each round of interleaved measurements (each contender in its own process, the "
        "order rotated every round) and the median over the rounds is reported, so that drift in the machine's "
        "speed cancels out. \"The default backend\" is `--backend auto`, what `effnet classify` and `Engine` run "
        "unless told otherwise: it picks the fastest of PyTorch, ONNX Runtime and OpenVINO by measuring them once "
        "per model, batch size and machine (this run measured first, so no timed process includes that).")
    add("")
    notes = why_not_met(results)
    if notes:
        add("Where a target is not met, why (from the numbers of this run):")
        add("")
        lines.extend(f"* {n}" for n in notes)
        add("")
    auto = results.get("auto")
    if auto:
        add("`auto`'s choices in this run (the backend it picked, and the images/s its own probe measured): " + "; ".join(
            f"{variant} {key.replace('/', ', batch ')}: **{c['backend']}**" + (
                " (" + ", ".join(f"{b} {v:.3g}" for b, v in c["measured"].items()) + ")" if c.get("measured") else "")
            for variant, choices in auto.items() for key, c in choices.items()) + ".")
        add("")
    fr = results.get("forward_ratios")
    er = results.get("e2e_ratios")
    if fr or er:
        add("All ratios of the default backend, per round:")
        add("")
        cells = [(f"forward {r['variant']}, batch {r['batch']}", r["name"], _rounds(r)) for r in fr or []
                 if r.get("median") is not None]
        cells += [(f"end to end {r['variant']}, {r['images']:,} paths", r["name"], _rounds(r)) for r in er or []
                  if r.get("median") is not None]
        lines.extend(_table(("measurement", "ratio", "median (rounds)"), "lll", cells))
        add("")

    fwd = results.get("forward")
    if fwd:
        add("## Model forward")
        add("")
        add("The model alone on a fixed random float32 batch, under `torch.inference_mode()`, torch's default "
            "threads. Each library runs in its own process (peak memory is that process's RSS high-water mark, "
            "imports and weights included). images/s is from the median iteration; where a row was repeated, the "
            "median of the repeats. torchvision and timm get channels-last weights and inputs (their fastest eager "
            "setting); transformers runs as shipped. The rows of effnet's default backend and of `optimize()` as "
            "`--backend torch` runs it (and their bfloat16 rows) run with the CLI's OpenMP setting "
            "(`OMP_WAIT_POLICY=PASSIVE`, set before torch loads), as `effnet classify` does. The default backend, "
            "`--backend torch` and the runtimes used directly were measured in every round (order rotated), the "
            "other libraries in the first round only.")
        add("")
        keys = []
        for row in fwd:
            key = (row["variant"], row["size"], row["batch"])
            if key not in keys:
                keys.append(key)
        for variant, size, batch in keys:
            rows = [r for r in fwd if (r["variant"], r["size"], r["batch"]) == (variant, size, batch)]
            base_opt = _forward_lookup(fwd, variant, batch, "effnet")
            base_eng = _forward_lookup(fwd, variant, batch, "effnet-engine")
            r0 = rows[0]
            reps = len(r0["runs"])
            add(f"**{variant} at {size}×{size}, batch {batch}** ({r0['warmup']} warm-up + {r0['iters']} timed "
                f"iterations{f', {reps} repeats' if reps > 1 else ''})")
            add("")
            cells = []
            for row in rows:
                label = LIB_LABELS[row["lib"]]
                if row["lib"] in ("torchvision", "timm"):
                    arch = TIMM_ARCH[variant] if row["lib"] == "timm" else f"efficientnet_{variant}"
                    label = label.replace("`efficientnet_*`", f"`{arch}`") if row["lib"] == "torchvision" \
                        else f"timm `{arch}`, channels-last, eager"
                cells.append((label, _f(row["images_per_s"]), _f(row["peak_rss_mb"], 0),
                              _ratio(base_eng, row["images_per_s"]), _ratio(base_opt, row["images_per_s"])))
            lines.extend(_table(("library", "images/s", "peak RSS (MB)", "`optimize()` ÷ this",
                                 "default allocator ÷ this"), "lrrrr", cells))
            add("")

    e2e = results.get("e2e")
    if e2e:
        add("## End to end: JPEG files to top-5")
        add("")
        add("Camera-sized JPEGs (640–1600 px on the long side, generated from the sample photos by crops, resizes "
            "and flips) to top-5 labels, batch 16 for everyone, each contender a separate process that prints one "
            "record per image, timed by the parent as the records arrive. b0 runs in steady state: 1,024 paths (256 "
            "files hard-linked 4 times, so each path is decoded), and **images/s** is taken over the middle half of "
            "the records, when decoding and the model run side by side (the first quarter includes start-up, model "
            "loading and the batches decoded ahead meanwhile). b7 reads 32 files and its images/s covers the second "
            "half. **wall** is the whole process, start-up included. The contenders ran in rounds (order rotated; "
            "timm and torchvision only in the first, over the first 512 of the b0 paths); each row is the round with the median images/s and *runs* lists "
            "them all. effnet is the real CLI (`effnet classify - --model DIR --format jsonl --top-k 5 -b 16`, paths "
            "on stdin, default decode workers) with its default backend and with each `--backend`; ONNX Runtime and "
            "OpenVINO used directly run effnet's export fed by effnet's processor in a DataLoader of 2 workers; "
            "transformers' pipeline loads the same weights through its own `from_pretrained` and image processor and "
            "gets the paths as a Dataset with `batch_size=16, num_workers=2`, so it decodes in parallel too; timm and "
            "torchvision use their own preprocessing with a DataLoader of 2 workers, as timm's inference script "
            "does. Peak RSS is the main process's high-water mark (the largest over the rounds); the tree PSS sums "
            "every process (decode workers included) with shared pages counted once, sampled every 0.5 s.")
        add("")
        for variant in dict.fromkeys(r["variant"] for r in e2e):
            rows = [r for r in e2e if r["variant"] == variant]
            ours = _e2e_lookup(e2e, variant, "effnet")
            add(f"**{variant}, {rows[0]['images']:,} images**")
            add("")
            lines.extend(_table(
                ("contender", "images/s", "runs", "wall (s)", "first batch at (s)", "peak RSS (MB)", "tree PSS (MB)",
                 "effnet ÷ this"), "lrlrrrrr",
                ((E2E_LABELS[row["lib"]] + ("" if row["ok"] else " (failed)")
                  + (f" ({row['images']:,} paths)" if row["images"] != rows[0]["images"] else ""),
                  _f(row["steady_images_per_s"]),
                  ", ".join(_f(r) for r in row.get("runs", [row["steady_images_per_s"]])), _f(row["wall_s"]),
                  _f(row["first_batch_s"]), _f(row["peak_rss_mb"], 0), _f(row["peak_tree_pss_mb"], 0),
                  _ratio(ours, row["steady_images_per_s"])) for row in rows)))
            add("")

    sus = results.get("sustained")
    if sus:
        add("### Steady state: is decoding the bottleneck?")
        add("")
        add(f"Where the time goes: `effnet classify` reads the {sus['images']:,} paths (the 256 files, hard-linked "
            f"{sus['images'] // 256} times, so each path is decoded) and its rate is taken over the middle half of "
            "the records, when decoding and the model run side by side, next to the model alone and the decoding "
            "alone. Each row is one pair measured back to back, because the machine's speed drifts: the "
            "model forward of the default backend (`Engine(backend=\"auto\", batch_size=16)`, b0, 20 timed iterations), effnet's decode pipeline alone (same "
            "workers, draft decoding and preprocessing, no model), and the CLI. *ceiling* is what the 2 cores "
            "could give if decoding and the model shared them perfectly, 1 / (1/forward + 1/decode).")
        add("")
        cells = []
        for i, p in enumerate(sus["pairs"], 1):
            ceiling = 1 / (1 / p["forward"] + 1 / p["decode"]) if p.get("forward") and p.get("decode") else None
            cells.append((i, _f(p["forward"]), _f(p["decode"]), _f(p["classify"]), _pct(p["classify"], p["forward"]),
                          _pct(ceiling, p["forward"])))
        lines.extend(_table(("pair", "forward (images/s)", "decode alone (images/s)", "`effnet classify` (images/s)",
                             "classify ÷ forward", "ceiling ÷ forward"), "rrrrrr", cells))
        b7 = sus.get("b7") or {}
        add("")
        if b7.get("forward"):
            add(f"b7 ({b7['images']} paths, rate after the first batch): forward {_f(b7['forward'], 2)} images/s, "
                f"`effnet classify` {_f(b7['classify'], 2)} images/s, {_pct(b7['classify'], b7['forward'])}.")
            add("")
        pairs = [p for p in sus["pairs"] if p.get("forward") and p.get("decode")]
        if pairs:
            cost = statistics.median(p["forward"] / p["decode"] for p in pairs)
            ceiling = statistics.median(1 / (1 + p["forward"] / p["decode"]) for p in pairs)
            add(f"On this machine decoding and preprocessing a camera JPEG costs about {100 * cost:.0f}% of what b0's "
                f"forward pass costs per image (median of the pairs), about half of it in libjpeg itself, which "
                f"reduced-size decoding only partly avoids. With both sharing the same 2 cores, that puts b0's end to "
                f"end rate at about {100 * ceiling:.0f}% of its forward rate even with perfect scheduling (the "
                f"ceiling column; an estimate from rates timed separately, so a single pair can land above it), "
                f"short of the 80% target; on a GPU, or with more cores than the model uses, decoding moves off "
                f"the model's critical path. For b7 decoding is a rounding error.")
        add("")

    loaded = results.get("loaded")
    if loaded:
        add("### Under load: a fair share of a busy machine")
        add("")
        add(f"`effnet classify` in steady state over the {loaded['images']:,} paths above (b0, batch 16, images/s "
            "over the middle half of the records) with nothing else running, with one CPU-bound Python loop at "
            "normal priority pinned to core 0, and with one pinned to each core. Each round measures every load "
            "for both backends, and each share is against the unloaded rate of the same round (median of the "
            f"rounds); a run that had not finished after {loaded['timeout_s']:.0f} s is stopped and its rate "
            "taken over what it produced. A fair share of 2 cores with one busy process is about half; with two, "
            "about a third.")
        add("")
        lines.extend(_table(("backend", "load", "images/s", "runs", "share of unloaded"), "llrlr", (
            ("default (`auto`)" if row["lib"] == "effnet" else "`--backend torch`", row["load"],
             _f(row["images_per_s"]), ", ".join(_f(x) for x in row["runs"]),
             f"{row['share']:.0%}" if row.get("share") is not None else "–") for row in loaded["rows"])))
        add("")
    if e2e and any(r["lib"] in ("effnet-onnxruntime", "effnet-openvino") for r in e2e):
        add("### Memory of `effnet classify` per backend")
        add("")
        base = results.get("import_torch_rss_mb")
        add("b0, the 1,024-path runs above: the main process's resident-set high-water mark and the summed PSS "
            "of the whole process tree (decode workers included)."
            + (f" For scale: a Python process that only runs `import torch` peaks at {base:.0f} MB here." if base else ""))
        add("")
        lines.extend(_table(("backend", "peak RSS, main process (MB)", "peak PSS, all processes (MB)"), "lrr", (
            (E2E_LABELS[row["lib"]], _f(row["peak_rss_mb"], 0), _f(row["peak_tree_pss_mb"], 0)) for row in e2e
            if row["variant"] == "b0" and row["lib"] in ("effnet", "effnet-torch", "effnet-onnxruntime",
                                                         "effnet-openvino"))))
        add("")

    draft = results.get("draft")
    if draft:
        add("### Fast decoding: options, time and top-1")
        add("")
        rows = draft["rows"]
        exact = next(row for row in rows if row["decoder"] is None)
        chosen = draft["default"]
        today = next((row for row in rows if row["decoder"] == "pillow" and row["margin"] == 1.5
                      and not row["cropped"]), None)

        def is_default(row: dict[str, Any]) -> bool:
            return (row["decoder"] == chosen["decoder"] and row["margin"] == chosen["margin"]
                    and row["cropped"] == chosen["cropped"])

        add(f"The whole per-image path a decode worker runs (open, decode, resize, crop, to tensor), on one thread, "
            f"for each way of decoding fast, against exact decoding (full decode, then the processor's own resize "
            f"and crop, bit-identical to transformers), with the bundled Lite0 (real ImageNet weights; resize to "
            f"256, crop 224) over the 5 sample photos and {exact['images'] - 5} camera-sized JPEGs (640-1600 px). "
            f"*margin* is how far the reduced-size decode may go: never below that multiple of the resize target. "
            f"*Pillow* is `Image.draft` (libjpeg scales 1/2, 1/4, 1/8); *simplejpeg* is libjpeg-turbo's scaled "
            f"decode (`min_width/min_height`, scales in eighths, so it stops closer to the margin). *crop-only "
            f"resize* resizes just the region that survives the centre crop, straight to 224×224 (Pillow "
            f"`resize(box=...)`), instead of resizing the whole image and cropping. Times are the median of "
            f"{draft['rounds']} rounds (each option decodes every image once per round, the options interleaved "
            f"image by image in a shuffled order); this machine's 2 cores are shared with other work, so they "
            f"are noisy: read differences under ~10% as ties. *top-2 gap* is the largest difference between the "
            f"top two probabilities (on the exact decode) among the images whose top-1 changed.")
        add("")
        lines.extend(_table(
            ("decoder", "margin", "decodes at least (px)", "resize", "ms/image", "÷ exact", "top-1 changed",
             "largest top-2 gap among them", "sample photos changed"), "lrrlrrrrl",
            (("exact (full decode)" if row["decoder"] is None else row["decoder"]
              + (" **(default)**" if is_default(row) else ""),
              "–" if row["margin"] is None else f"{row['margin']:g}×",
              "–" if row["draft_size"] is None else row["draft_size"],
              "crop only" if row["cropped"] else "whole, then crop",
              _f(row["ms"], 2), _ratio(row["ms"], exact["ms"]), f"{row['flips']} of {row['images']}",
              _f(row["max_gap"], 3),
              ", ".join(name for name, _, is_sample in row["flipped"] if is_sample) or "none")
             for row in rows)))
        add("")
        def same(decoder: str, margin: float, cropped: bool) -> dict[str, Any] | None:
            return next((r for r in rows if r["decoder"] == decoder and r["margin"] == margin
                         and r["cropped"] == cropped), None)

        def span(ratios: list[float]) -> str:
            return f"{min(ratios):.2f}–{max(ratios):.2f}×" if ratios else "–"

        crop_ratios = [r["ms"] / whole["ms"] for r in rows if r["cropped"]
                       for whole in [same(r["decoder"], r["margin"], False)] if whole]
        add(f"* **Crop-only resize.** Resizing only the crop's region samples the same source positions with "
            f"the same filter, but Pillow computes the filter weights from the region's own coordinates and the "
            f"rounding differs: on the sample photos the pixels are within one 8-bit level of resize-then-crop "
            f"(with Pillow's resize and with torchvision's, which the exact path uses), not identical "
            f"(benchmarks/decoders.py `preprocess_cropped`). So it is no "
            f"free speed-up for the exact path, which must stay bit-identical to transformers. When decoding fast "
            f"it took {span(crop_ratios)} the time of resizing the whole image and cropping"
            + (" (the processor resizes with torchvision's uint8 kernels, which are faster on the whole image than "
               "Pillow's resampling is on the kept part alone)." if crop_ratios and min(crop_ratios) > 1 else "."))
        sj = [(r, same("pillow", r["margin"], r["cropped"])) for r in rows if r["decoder"] == "simplejpeg"]
        sj = [(r, p) for r, p in sj if p]
        if sj:
            counts = ", ".join(f"{r['flips']} at {r['margin']:g}× (Pillow {p['flips']})"
                               for r, p in sj if not r["cropped"])
            add(f"* **simplejpeg.** With the same margin and resize it changed the top-1 of {counts} images, "
                f"in {span([r['ms'] / p['ms'] for r, p in sj])} Pillow's time. Its scales come in eighths, so it decodes "
                f"closer to the margin than Pillow, which stops at the power of two above it, and leaves more of "
                f"the downscaling to the DCT's cruder scaled IDCTs (benchmarks/decoders.py `open_simplejpeg`; "
                f"files it cannot decode without a warning go through effnet's decoder).")
        if today:
            within = [r for r in rows if r["decoder"] is not None and r["flips"] <= today["flips"]
                      and not any(is_sample for _, _, is_sample in r["flipped"])]
            best = min(within, key=lambda r: r["ms"]) if within else None
            add(f"* **The bound for the fast default**: no more top-1 changes against exact decoding than Pillow's "
                f"draft at 1.5× with the whole-image resize (the default before this measurement: "
                f"{today['flips']} of {today['images']} here), and none on the 5 sample photos; the fastest option "
                f"within it becomes the default. "
                + (f"Fastest within it in this run: {best['decoder']} at {best['margin']:g}× with "
                   f"{'the crop-only' if best['cropped'] else 'the whole-image'} resize, {_f(best['ms'], 2)} ms/image "
                   f"({_ratio(best['ms'], exact['ms'])} exact decoding). " if best else "")
                + f"The default (`effnet_cli.runtime.engine.DRAFT_MARGIN`) is {chosen['decoder']} at "
                f"{chosen['margin']:g}× with {'the crop-only' if chosen['cropped'] else 'the whole-image'} resize.")
        add("")

    bf16 = results.get("bf16")
    if bf16:
        from bf16_agreement import render as render_bf16

        add("### bfloat16 and the other backends: top-1 agreement")
        add("")
        add(f"How often each backend and dtype keeps PyTorch float32's top-1 class, with the bundled Lite0 (real "
            f"ImageNet weights) and exact decoding, on the 5 sample photos and the 256 camera-sized JPEGs "
            f"({bf16['images']} images; `python benchmarks/bf16_agreement.py`). effnet's bfloat16 (torch and "
            "OpenVINO) keeps the stem and the first stage in float32, where most flips came from (torch also "
            "pools and classifies in float32); the row \"OpenVINO used directly\" compiles the same IR with "
            "bfloat16 precision for every layer, as OpenVINO's documentation shows. *top-2 gap* is the difference "
            "between the reference's two highest probabilities: the flips are near-ties.")
        add("")
        add(render_bf16(bf16))
        add("")

    cli = results.get("cli")
    if cli:
        add("## The command line")
        add("")
        runs = ", ".join(f"{t:.3f}" for t in cli["help_runs_s"])
        add(f"`effnet --help`: median **{cli['help_median_s']:.3f} s** over {len(cli['help_runs_s'])} runs "
            f"({runs} s) after one warm-up run.")
        add("")
        add("Memory of `effnet classify` as the number of files grows (64×64 JPEGs, distinct hard links, a b0 "
            "whose preprocessing resizes to 64 px so that 10,000 files take seconds, batch 64, default workers): "
            "results stream out batch by batch and nothing accumulates.")
        add("")
        lines.extend(_table(("files", "peak RSS, main process (MB)", "peak PSS, all processes (MB)", "wall (s)"), "rrrr",
                            ((f"{row['files']:,}", _f(row["peak_rss_mb"], 0), _f(row["peak_tree_pss_mb"], 0),
                              _f(row["wall_s"])) for row in cli["memory"])))
        add("")

    ab = results.get("ablation")
    if ab:
        add("## What each optimisation is worth")
        add("")
        add("**Model forward**, b0 at 224, batch 16, float32 (benchmarks/ablation.py). Each step adds one change "
            "to the row above it; all variants run round-robin in one process and each reports its best of "
            f"{ab['forward'][0]['rounds'] if ab['forward'] else '?'} rounds. The right-hand columns repeat the "
            "whole set in a process where the allocator setting `optimize()` makes on the CPU "
            "(`keep_freed_memory()`) is on. "
            "*max rel. diff* is the largest logit difference from the plain model, relative to the largest logit.")
        add("")
        plain = {r["name"]: r for r in ab["forward"] if not r["keep_freed_memory"]}
        kept = {r["name"]: r for r in ab["forward"] if r["keep_freed_memory"]}
        cells = []
        prev_a = prev_b = None
        for name in dict.fromkeys(list(plain) + list(kept)):
            a = plain.get(name, {}).get("images_per_s")
            b = kept.get(name, {}).get("images_per_s")
            diff = (plain.get(name) or kept.get(name)).get("max_rel_diff")
            chained = name.startswith("+") or name.startswith("eager")
            cells.append((name, _f(a), _ratio(a, prev_a) if chained and prev_a else "", _f(b),
                          _ratio(b, prev_b) if chained and prev_b else "", f"{diff:.1e}"))
            if chained:
                prev_a, prev_b = a, b
        lines.extend(_table(("step", "images/s", "× step before", "with allocator setting", "× step before",
                             "max rel. diff"), "lrrrrr", cells))
        add("")
        if ab.get("e2e"):
            add("**End to end**, `effnet classify` in steady state with b0 (the 1,024 linked camera JPEG paths, "
                "images/s over the middle half of the records, the settings run one after another; *runs* lists "
                "each pass):")
            add("")
            lines.extend(_table(("setting", "images/s", "runs"), "lrl",
                                ((row["name"], _f(row["images_per_s"]), ", ".join(_f(r) for r in row["runs"]))
                                 for row in ab["e2e"])))
            add("")
        if ab.get("under_load"):
            add("**Model forward while another program keeps one of the cores busy** (a Python busy loop; "
                "b0, batch 16). torch's OpenMP threads wait for each other at the end of every op; by default an "
                "idle one spins for a while before sleeping, and with a core taken that spinning starves the "
                "thread everyone waits for:")
            add("")
            lines.extend(_table(("setting", "images/s"), "lr",
                                ((row["name"], _f(row["images_per_s"])) for row in ab["under_load"])))
            add("")
    add(PROSE)
    dist = results.get("disturbance")
    if dist:
        add("")
        add(f"Other programs on the machine: every measurement waited for idle CPUs and was repeated (up to "
            f"{dist['tries']} times) when other programs used more than {dist['limit']:.0%} of the CPU time "
            f"while it ran; of the {dist['measurements']} measurements kept, the most disturbed saw "
            f"{dist['max_foreign_share']:.1%}.")
    mapping = results.get("mapping")
    if mapping:
        add("")
        add("Same weights everywhere: the largest relative logit difference where two libraries compute the "
            "same function: " + "; ".join(f"{k} vs effnet: {v:.1e}" for k, v in mapping.items()) + ".")
    add("")
    return "\n".join(lines)


PROSE = """\
### The optimisations, and which were kept

* **Batch norm folded into the conv before it** (kept). One op instead of two and one pass less over every
  activation; exact up to float rounding.
* **Channels-last memory format** (kept). oneDNN's depthwise and 1×1 kernels work in NHWC; in NCHW every conv
  converts layouts on the way in and out.
* **No padding copies** (kept). The hub's b0–b7 pad TF-style at stride 2: one zero row/column more after than
  before. `F.pad` makes a padded copy of the stage's largest tensor (a fresh buffer, a fill and a copy) before
  each such conv. The same result comes from the conv's own symmetric padding and a kernel with one zero
  row/column prepended: every output reads exactly the same input pixels with the same weights. `"same"`
  padding (TF-Lite, timm `tf_*`) picks the kernel per input size.
* **In place where nothing else reads the tensor** (kept): activations on the conv output, the squeeze-excite
  gate multiplied into the depthwise output, the residual added to the projection output. Fewer
  activation-sized allocations.
* **Conv + bias + activation as one oneDNN primitive** (kept, CPU). `torch.ops.mkldnn._convolution_pointwise`
  (the op `torch.compile` emits for this pattern on CPU) applies SiLU (or ReLU/ReLU6/GELU/sigmoid) while the
  output is still in cache. A one-time check at first use compares it with `conv2d` + SiLU; without oneDNN, or
  on CUDA/MPS, the same modules run `conv2d` and the in-place activation.
* **`torch.inference_mode()`** (kept; the Engine's model calls run under it). Against `no_grad` the
  difference is within noise: with frozen parameters there is no autograd work to skip either way.
* **Allocator setting** (kept, CPU only: `effnet_cli.malloc.keep_freed_memory()`). glibc serves
  large allocations with a fresh `mmap`, returns them on free and trims the heap, so each batch page-faults
  its large activations in again, zero-filled by the kernel page by page: on this VM that costs as much as
  the convs on those tensors. Raising glibc's mmap and trim thresholds to 1 GiB (`mallopt`) makes the second
  batch reuse the first one's memory. The cost is peak memory: a few percent for b0, but serving b7's
  hundreds-of-MB tensors from the heap fragments it, and at batch 16 the peak nearly doubles (compare the two
  effnet rows of the b7 tables). It is process-wide: `optimize()` turns it on for a model on the CPU unless
  called with `keep_freed_memory=False`, and the decode workers undo it for themselves (next point). The
  same setting would speed torchvision up too, which is why the forward tables show both effnet rows.
* **Flat memory in the decode workers** (kept: `effnet_cli.malloc.return_freed_memory()`). With glibc's
  default, adaptive mmap threshold, each freed batch tensor raises the threshold, later ones come from the
  heap, and the heap fragments: each worker grew by up to one batch tensor per batch, about 26 KB per file over
  10,000 files. The workers fix the threshold at 1 MiB: batch tensors go back to the system when freed, while
  per-image buffers (decoded image, preprocessed tensor; below 1 MiB at draft sizes) are reused from the heap.
  Their memory then stays flat (the memory table above). glibc's initial 128 KiB would also keep it flat, but
  page-faulting every per-image buffer in again made decoding ~1.4× slower on this VM.
* **Thread layout and priorities** (changed). The model keeps one thread per core in the main process;
  each decode worker has one thread; 2 workers on 2 cores, at normal priority. They used to run at nice 19
  when the model was on the CPU: torch's OpenMP threads spin while they wait for each other at the end of
  every op, so a worker that preempted one of them stalled the whole team, while a niced worker decoded in
  the gaps. But a niced worker also waits behind every other busy program: with one busy process per core,
  `effnet classify` made no records in 60 s (2.5 images/s with ONNX Runtime and one busy core, against
  19.7 at normal priority). The CLI now sets `OMP_WAIT_POLICY=PASSIVE` before torch loads (and turns off
  ONNX Runtime's spinning with it), so idle model threads sleep instead of taking time slices from the
  decode workers or from other programs, and the workers need no lower priority. On a shared 2-core
  machine (load average ~10 from other programs) `--backend torch` went from 9.0-13.7 to 68.9 images/s
  end to end with the passive policy, and from 4.9 to 34.8 with two extra busy processes; with ONNX Runtime
  and two busy processes the workers at normal priority gave 14.6-18.9 images/s where nice 19 gave 0.6.
  `OMP_WAIT_POLICY` set by the user is respected.
* **JPEG draft mode** (kept, the default for `classify`; `--exact-decode` turns it off; `embed` decodes fully
  unless `--fast-decode`; the same pair of flags on both commands). libjpeg decodes at 1/2, 1/4 or 1/8 scale via the DCT, with a faster IDCT and
  plain chroma upsampling, but never below 1.5× the resize target (`effnet_cli.runtime.engine.DRAFT_MARGIN`), so
  the resize's own filter still does the last step of the downscaling. Decoding right down to the resize
  target is cheaper but lets the DCT's cruder scaling change close calls: with the bundled Lite0 it flipped
  the top-1 of astronaut.jpg (bobsled 0.148 vs football helmet 0.129 on a full decode), which fails the guard
  (tests/test_optimize.py). The fast-decoding table above shows what each margin and decoder costs and changes.
* **Decode overlapped with the model** (kept): worker processes decode and preprocess whole batches ahead
  of the model; see `--workers 0` for what the overlap is worth.
* **bfloat16** (opt-in, `--dtype bfloat16`). On CPUs with AMX/AVX512-BF16 (this one) the convs run ~1.5×
  faster, but logits move by ~1e-3 relative, outside the 1e-4 guard, so it is never the default.
  `torch.autocast` on top of the float32 model gains nothing (the fused convs are outside its op lists).
* **Backends: `--backend auto` is the default** (`torch`, `onnxruntime` and `openvino` on request; the
  `EFFNET_BACKEND` environment variable sets the default). The plain model is exported once (dynamo exporter,
  opset 18; TF padding folded into the convs' pads) and cached by weights hash. `auto` times PyTorch
  (`optimize()`), ONNX Runtime and OpenVINO on a random batch of the run's batch size, once per model, batch
  size, dtype and machine, and remembers the fastest in `$EFFNET_CACHE/exports/auto/`; the CLI measures only
  on runs of 1,000 inputs or more (or an unknown number, such as paths on stdin), because the export and
  measurement take seconds that a short run would not win back; shorter runs use the remembered choice, or
  torch. No one backend wins everywhere, which is why it is measured rather than fixed: on this AMD EPYC the
  runtimes are ~2.7× `optimize()` at batch 1 (the forward tables above) and about level with it at batch
  16; on the issue's Intel Xeon with AMX they were 1.0-1.2× at batch 16, ~3× at batch 1, and OpenVINO's
  bfloat16 1.56× torch's. End to end the gain is smaller (about 1.1× `--backend torch` for b0 when the default
  was decided), because decoding shares the same 2 cores (the steady-state table). Since a faster forward
  never costs anything and the batch-1 gain is large, ONNX Runtime and OpenVINO are default dependencies, so
  the README's first command gets the fast path with no extra to install. `--backend torch` remains for
  `--compile`, `embed --features stage:N`, GPUs and multi-device runs, and it stays a row in every table here
  so that the PyTorch path's speed stays visible.
* **Pinned memory + `non_blocking` copies** (kept, CUDA only; nothing to measure on this machine).
* **`torch.compile`** (opt-in, `--compile`, with inductor's weight freezing). Roughly on par with the eager
  fast path here after tens of seconds of compilation per input shape; worth it only for long runs.
* **TorchScript `trace` + `freeze` (+ `optimize_for_inference`)** (not kept). Measured on the folded model:
  freezing alone is no faster than eager, and `optimize_for_inference`'s MKLDNN conversion is much slower
  for depthwise convs; tracing also cannot carry the fused oneDNN op, and `torch.jit` is deprecated in
  torch 2.14.

### The fast path in Python: `effnet_cli.optimize`

```python
import torch
from effnet_cli import load_pretrained
from effnet_cli import optimize

model, processor = load_pretrained("lite0")
fast = optimize(model)                      # device=None: the model's own; dtype=None: the model's own
with torch.inference_mode():
    logits = fast(processor(images).pixel_values).logits
```

`optimize(model, device=None, dtype=None, *, compile=False, keep_freed_memory=True)` (also callable as
`effnet_cli.optimize(model)`) returns a copy for inference only: batch norms
folded, convs fused with their bias, activation and padding, squeeze-excite and residual in place,
channels-last, parameters frozen, eval mode. The original model is untouched, and the copy keeps the
model's interface (`logits`, `last_hidden_state`, `output_hidden_states`, `stage_output`). `device` and
`dtype` move it (`"cuda"`, `"bfloat16"`, ...); `compile=True` wraps it in `torch.compile` with inductor's
freezing. In float32 its logits match the plain model's within 1e-4 relative (tests/test_optimize.py checks
this, top-1 agreement on the sample photos, and that reduced-size JPEG decoding changes no top-1).
On the CPU it also sets the allocator to keep freed memory (above; `keep_freed_memory=False` leaves the
process's allocator alone). `effnet_cli.runtime.engine.Engine` adds `inference_mode`, the device transfer (pinned,
non-blocking on CUDA) and the decode pipeline.

### Method and caveats

* Weights are seeded random numbers with trained-network-like statistics (He-initialised convs, batch-norm
  statistics away from identity), not ImageNet weights: speed does not depend on the values as long as they
  are not degenerate (denormals would slow everyone down), and nothing is downloaded. They are written once in
  effnet's layout and converted: transformers loads effnet's directory with its own `from_pretrained`; timm and
  torchvision get the same tensors matched by position with every shape checked, and the outputs are compared
  where the architectures coincide (below).
* The architectures differ slightly by design: effnet and transformers pad like the hub checkpoints;
  torchvision and timm `efficientnet_b0` pad symmetrically; timm `tf_efficientnet_b7` pads like TF (equal to
  the hub's at 600 px).
* Other engineers share this machine. Forward rows are repeated with the order of libraries rotated, the
  ablation interleaves its variants, and every measurement is checked for other programs' CPU use (below),
  so that load does not favour one contender; single b7 measurements remain the noisiest.
* b7 at batch 16 runs 1 warm-up and 1 timed iteration per library (each takes tens of seconds), and b7 end
  to end uses 32 of the 256 images (its images/s then covers the second of two batches)."""

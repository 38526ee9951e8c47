"""The sections of the benchmark report that depend on what was measured: one function per section.

Each function takes the results dict of benchmarks/run.py and returns the section's
markdown lines (blank lines included), or no lines when the section was not run.
benchmarks/report.py puts them, in order, into benchmarks/report_template.md.
"""

from __future__ import annotations

import statistics
from typing import Any

from report_format import (
    CLI_LIBS, E2E_LABELS, LIB_LABELS, TIMM_ARCH, e2e_lookup, fmt, forward_lookup, pct, rounds, table, times,
)
from report_targets import why_not_met

Results = dict[str, Any]


def notes_section(results: Results) -> list[str]:
    """Why each unmet target was missed, as bullets."""
    notes = why_not_met(results)
    if not notes:
        return []
    return ["Where a target is not met, why (from the numbers of this run):", "", *(f"* {n}" for n in notes), ""]


def auto_section(results: Results) -> list[str]:
    """The backends `--backend auto` chose in this run, with what its probe measured."""
    auto = results.get("auto")
    if not auto:
        return []
    return ["`auto`'s choices in this run (the backend it picked, and the images/s its own probe measured): " + "; ".join(
        f"{variant} {key.replace('/', ', batch ')}: **{c['backend']}**" + (
            " (" + ", ".join(f"{b} {v:.3g}" for b, v in c["measured"].items()) + ")" if c.get("measured") else "")
        for variant, choices in auto.items() for key, c in choices.items()) + ".", ""]


def ratios_section(results: Results) -> list[str]:
    """Every ratio of the default backend, with its per-round values."""
    fr = results.get("forward_ratios")
    er = results.get("e2e_ratios")
    if not (fr or er):
        return []
    cells = [(f"forward {r['variant']}, batch {r['batch']}", r["name"], rounds(r)) for r in fr or []
             if r.get("median") is not None]
    cells += [(f"end to end {r['variant']}, {r['images']:,} paths", r["name"], rounds(r)) for r in er or []
              if r.get("median") is not None]
    return ["All ratios of the default backend, per round:", "",
            *table(("measurement", "ratio", "median (rounds)"), "lll", cells), ""]


def _forward_label(lib: str, variant: str) -> str:
    """A forward row's library, with torchvision's and timm's architecture for ``variant``."""
    label = LIB_LABELS[lib]
    if lib == "torchvision":
        return label.replace("`efficientnet_*`", f"`efficientnet_{variant}`")
    if lib == "timm":
        return f"timm `{TIMM_ARCH[variant]}`, channels-last, eager"
    return label


def _forward_table(fwd: list[dict[str, Any]], variant: str, size: int, batch: int) -> list[str]:
    """One model-forward table: every library at ``variant``, ``size`` px, ``batch``."""
    rows = [r for r in fwd if (r["variant"], r["size"], r["batch"]) == (variant, size, batch)]
    base_opt = forward_lookup(fwd, variant, batch, "effnet")
    base_eng = forward_lookup(fwd, variant, batch, "effnet-engine")
    r0 = rows[0]
    reps = len(r0["runs"])
    cells = [(_forward_label(row["lib"], variant), fmt(row["images_per_s"]), fmt(row["peak_rss_mb"], 0),
              times(base_eng, row["images_per_s"]), times(base_opt, row["images_per_s"])) for row in rows]
    return [f"**{variant} at {size}×{size}, batch {batch}** ({r0['warmup']} warm-up + {r0['iters']} timed "
            f"iterations{f', {reps} repeats' if reps > 1 else ''})", "",
            *table(("library", "images/s", "peak RSS (MB)", "`optimize()` ÷ this", "default allocator ÷ this"),
                   "lrrrr", cells), ""]


def forward_section(results: Results) -> list[str]:
    """The model forward alone, one table per variant, size and batch."""
    fwd = results.get("forward")
    if not fwd:
        return []
    lines = [
        "## Model forward", "",
        "The model alone on a fixed random float32 batch, under `torch.inference_mode()`, torch's default "
        "threads. Each library runs in its own process (peak memory is that process's RSS high-water mark, "
        "imports and weights included). images/s is from the median iteration; where a row was repeated, the "
        "median of the repeats. torchvision and timm get channels-last weights and inputs (their fastest eager "
        "setting); transformers runs as shipped. The rows of effnet's default backend and of `optimize()` as "
        "`--backend torch` runs it (and their bfloat16 rows) run with the CLI's OpenMP setting "
        "(`OMP_WAIT_POLICY=PASSIVE`, set before torch loads), as `effnet classify` does. The default backend, "
        "`--backend torch` and the runtimes used directly were measured in every round (order rotated), the "
        "other libraries in the first round only.", ""]
    for variant, size, batch in dict.fromkeys((row["variant"], row["size"], row["batch"]) for row in fwd):
        lines += _forward_table(fwd, variant, size, batch)
    return lines


E2E_INTRO = (
    "Camera-sized JPEGs (640–1600 px on the long side, generated from the sample photos by crops, resizes "
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


def e2e_section(results: Results) -> list[str]:
    """JPEG files to top-5, one table per variant."""
    e2e = results.get("e2e")
    if not e2e:
        return []
    lines = ["## End to end: JPEG files to top-5", "", E2E_INTRO, ""]
    for variant in dict.fromkeys(r["variant"] for r in e2e):
        rows = [r for r in e2e if r["variant"] == variant]
        ours = e2e_lookup(e2e, variant, "effnet")
        lines += [f"**{variant}, {rows[0]['images']:,} images**", ""]
        lines += table(
            ("contender", "images/s", "runs", "wall (s)", "first batch at (s)", "peak RSS (MB)", "tree PSS (MB)",
             "effnet ÷ this"), "lrlrrrrr",
            ((E2E_LABELS[row["lib"]] + ("" if row["ok"] else " (failed)")
              + (f" ({row['images']:,} paths)" if row["images"] != rows[0]["images"] else ""),
              fmt(row["steady_images_per_s"]),
              ", ".join(fmt(r) for r in row.get("runs", [row["steady_images_per_s"]])), fmt(row["wall_s"]),
              fmt(row["first_batch_s"]), fmt(row["peak_rss_mb"], 0), fmt(row["peak_tree_pss_mb"], 0),
              times(ours, row["steady_images_per_s"])) for row in rows))
        lines.append("")
    return lines


def _sustained_conclusion(pairs: list[dict[str, Any]]) -> str:
    """What decoding costs next to the forward, and the ceiling that puts on end to end."""
    cost = statistics.median(p["forward"] / p["decode"] for p in pairs)
    ceiling = statistics.median(1 / (1 + p["forward"] / p["decode"]) for p in pairs)
    return (f"On this machine decoding and preprocessing a camera JPEG costs about {100 * cost:.0f}% of what b0's "
            f"forward pass costs per image (median of the pairs), about half of it in libjpeg itself, which "
            f"reduced-size decoding only partly avoids. With both sharing the same 2 cores, that puts b0's end to "
            f"end rate at about {100 * ceiling:.0f}% of its forward rate even with perfect scheduling (the "
            f"ceiling column; an estimate from rates timed separately, so a single pair can land above it), "
            f"short of the 80% target; on a GPU, or with more cores than the model uses, decoding moves off "
            f"the model's critical path. For b7 decoding is a rounding error.")


def sustained_section(results: Results) -> list[str]:
    """Steady state: `effnet classify` against effnet's own forward and decode pipeline, pair by pair."""
    sus = results.get("sustained")
    if not sus:
        return []
    lines = [
        "### Steady state: is decoding the bottleneck?", "",
        f"Where the time goes: `effnet classify` reads the {sus['images']:,} paths (the 256 files, hard-linked "
        f"{sus['images'] // 256} times, so each path is decoded) and its rate is taken over the middle half of "
        "the records, when decoding and the model run side by side, next to the model alone and the decoding "
        "alone. Each row is one pair measured back to back, because the machine's speed drifts: the "
        "model forward of the default backend (`Engine(backend=\"auto\", batch_size=16)`, b0, 20 timed iterations), effnet's decode pipeline alone (same "
        "workers, draft decoding and preprocessing, no model), and the CLI. *ceiling* is what the 2 cores "
        "could give if decoding and the model shared them perfectly, 1 / (1/forward + 1/decode).", ""]
    cells = []
    for i, p in enumerate(sus["pairs"], 1):
        ceiling = 1 / (1 / p["forward"] + 1 / p["decode"]) if p.get("forward") and p.get("decode") else None
        cells.append((i, fmt(p["forward"]), fmt(p["decode"]), fmt(p["classify"]), pct(p["classify"], p["forward"]),
                      pct(ceiling, p["forward"])))
    lines += table(("pair", "forward (images/s)", "decode alone (images/s)", "`effnet classify` (images/s)",
                    "classify ÷ forward", "ceiling ÷ forward"), "rrrrrr", cells)
    lines.append("")
    b7 = sus.get("b7") or {}
    if b7.get("forward"):
        lines += [f"b7 ({b7['images']} paths, rate after the first batch): forward {fmt(b7['forward'], 2)} images/s, "
                  f"`effnet classify` {fmt(b7['classify'], 2)} images/s, {pct(b7['classify'], b7['forward'])}.", ""]
    pairs = [p for p in sus["pairs"] if p.get("forward") and p.get("decode")]
    if pairs:
        lines.append(_sustained_conclusion(pairs))
    lines.append("")
    return lines


def loaded_section(results: Results) -> list[str]:
    """`effnet classify` with nothing, one and two busy processes pinned to the cores."""
    loaded = results.get("loaded")
    if not loaded:
        return []
    return [
        "### Under load: a fair share of a busy machine", "",
        f"`effnet classify` in steady state over the {loaded['images']:,} paths above (b0, batch 16, images/s "
        "over the middle half of the records) with nothing else running, with one CPU-bound Python loop at "
        "normal priority pinned to core 0, and with one pinned to each core. Each round measures every load "
        "for both backends, and each share is against the unloaded rate of the same round (median of the "
        f"rounds); a run that had not finished after {loaded['timeout_s']:.0f} s is stopped and its rate "
        "taken over what it produced. A fair share of 2 cores with one busy process is about half; with two, "
        "about a third.", "",
        *table(("backend", "load", "images/s", "runs", "share of unloaded"), "llrlr", (
            ("default (`auto`)" if row["lib"] == "effnet" else "`--backend torch`", row["load"],
             fmt(row["images_per_s"]), ", ".join(fmt(x) for x in row["runs"]),
             f"{row['share']:.0%}" if row.get("share") is not None else "–") for row in loaded["rows"])),
        ""]


def backend_memory_section(results: Results) -> list[str]:
    """Peak memory of `effnet classify` with each `--backend` (when the runtimes' CLI rows ran)."""
    e2e = results.get("e2e")
    if not (e2e and any(r["lib"] in ("effnet-onnxruntime", "effnet-openvino") for r in e2e)):
        return []
    base = results.get("import_torch_rss_mb")
    return [
        "### Memory of `effnet classify` per backend", "",
        "b0, the 1,024-path runs above: the main process's resident-set high-water mark and the summed PSS "
        "of the whole process tree (decode workers included)."
        + (f" For scale: a Python process that only runs `import torch` peaks at {base:.0f} MB here." if base else ""),
        "",
        *table(("backend", "peak RSS, main process (MB)", "peak PSS, all processes (MB)"), "lrr", (
            (E2E_LABELS[row["lib"]], fmt(row["peak_rss_mb"], 0), fmt(row["peak_tree_pss_mb"], 0)) for row in e2e
            if row["variant"] == "b0" and row["lib"] in CLI_LIBS)),
        ""]


def _draft_intro(draft: dict[str, Any], exact: dict[str, Any]) -> str:
    """What the fast-decoding table times and counts."""
    return (f"The whole per-image path a decode worker runs (open, decode, resize, crop, to tensor), on one thread, "
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


def _is_default(row: dict[str, Any], chosen: dict[str, Any]) -> bool:
    """Whether a fast-decoding option is the default one."""
    return (row["decoder"] == chosen["decoder"] and row["margin"] == chosen["margin"]
            and row["cropped"] == chosen["cropped"])


def _draft_table(rows: list[dict[str, Any]], exact: dict[str, Any], chosen: dict[str, Any]) -> list[str]:
    """One row per fast-decoding option: its time against exact decoding and the top-1 it changed."""
    return table(
        ("decoder", "margin", "decodes at least (px)", "resize", "ms/image", "÷ exact", "top-1 changed",
         "largest top-2 gap among them", "sample photos changed"), "lrrlrrrrl",
        (("exact (full decode)" if row["decoder"] is None else row["decoder"]
          + (" **(default)**" if _is_default(row, chosen) else ""),
          "–" if row["margin"] is None else f"{row['margin']:g}×",
          "–" if row["draft_size"] is None else row["draft_size"],
          "crop only" if row["cropped"] else "whole, then crop",
          fmt(row["ms"], 2), times(row["ms"], exact["ms"]), f"{row['flips']} of {row['images']}",
          fmt(row["max_gap"], 3),
          ", ".join(name for name, _, is_sample in row["flipped"] if is_sample) or "none")
         for row in rows))


def _same(rows: list[dict[str, Any]], decoder: str, margin: float, cropped: bool) -> dict[str, Any] | None:
    """The option with this decoder, margin and resize."""
    return next((r for r in rows if r["decoder"] == decoder and r["margin"] == margin
                 and r["cropped"] == cropped), None)


def _span(ratios: list[float]) -> str:
    """The range of some time ratios, as ``0.90–1.10×``."""
    return f"{min(ratios):.2f}–{max(ratios):.2f}×" if ratios else "–"


def _crop_and_simplejpeg_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the crop-only resize and simplejpeg cost and change, against Pillow with the same margin."""
    crop_ratios = [r["ms"] / whole["ms"] for r in rows if r["cropped"]
                   for whole in [_same(rows, r["decoder"], r["margin"], False)] if whole]
    out = [f"* **Crop-only resize.** Resizing only the crop's region samples the same source positions with "
           f"the same filter, but Pillow computes the filter weights from the region's own coordinates and the "
           f"rounding differs: on the sample photos the pixels are within one 8-bit level of resize-then-crop "
           f"(with Pillow's resize and with torchvision's, which the exact path uses), not identical "
           f"(benchmarks/decoders.py `preprocess_cropped`). So it is no "
           f"free speed-up for the exact path, which must stay bit-identical to transformers. When decoding fast "
           f"it took {_span(crop_ratios)} the time of resizing the whole image and cropping"
           + (" (the processor resizes with torchvision's uint8 kernels, which are faster on the whole image than "
              "Pillow's resampling is on the kept part alone)." if crop_ratios and min(crop_ratios) > 1 else ".")]
    sj = [(r, _same(rows, "pillow", r["margin"], r["cropped"])) for r in rows if r["decoder"] == "simplejpeg"]
    sj = [(r, p) for r, p in sj if p]
    if sj:
        counts = ", ".join(f"{r['flips']} at {r['margin']:g}× (Pillow {p['flips']})"
                           for r, p in sj if not r["cropped"])
        out.append(f"* **simplejpeg.** With the same margin and resize it changed the top-1 of {counts} images, "
                   f"in {_span([r['ms'] / p['ms'] for r, p in sj])} Pillow's time. Its scales come in eighths, so it "
                   f"decodes closer to the margin than Pillow, which stops at the power of two above it, and leaves "
                   f"more of the downscaling to the DCT's cruder scaled IDCTs (benchmarks/decoders.py "
                   f"`open_simplejpeg`; files it cannot decode without a warning go through effnet's decoder).")
    return out


def _draft_bound(rows: list[dict[str, Any]], exact: dict[str, Any], chosen: dict[str, Any]) -> list[str]:
    """The bound a fast default must keep (Pillow's draft at 1.5×), the fastest option within it, the default."""
    today = next((row for row in rows if row["decoder"] == "pillow" and row["margin"] == 1.5
                  and not row["cropped"]), None)
    if not today:
        return []
    within = [r for r in rows if r["decoder"] is not None and r["flips"] <= today["flips"]
              and not any(is_sample for _, _, is_sample in r["flipped"])]
    best = min(within, key=lambda r: r["ms"]) if within else None
    return [f"* **The bound for the fast default**: no more top-1 changes against exact decoding than Pillow's "
            f"draft at 1.5× with the whole-image resize (the default before this measurement: "
            f"{today['flips']} of {today['images']} here), and none on the 5 sample photos; the fastest option "
            f"within it becomes the default. "
            + (f"Fastest within it in this run: {best['decoder']} at {best['margin']:g}× with "
               f"{'the crop-only' if best['cropped'] else 'the whole-image'} resize, {fmt(best['ms'], 2)} ms/image "
               f"({times(best['ms'], exact['ms'])} exact decoding). " if best else "")
            + f"The default (`effnet_cli.runtime.engine.DRAFT_MARGIN`) is {chosen['decoder']} at "
            f"{chosen['margin']:g}× with {'the crop-only' if chosen['cropped'] else 'the whole-image'} resize."]


def draft_section(results: Results) -> list[str]:
    """Fast decoding: each decoder, margin and resize against exact decoding, in time and top-1."""
    draft = results.get("draft")
    if not draft:
        return []
    rows = draft["rows"]
    exact = next(row for row in rows if row["decoder"] is None)
    chosen = draft["default"]
    return ["### Fast decoding: options, time and top-1", "", _draft_intro(draft, exact), "",
            *_draft_table(rows, exact, chosen), "",
            *_crop_and_simplejpeg_notes(rows), *_draft_bound(rows, exact, chosen), ""]


def bf16_section(results: Results) -> list[str]:
    """bfloat16 and the other backends: top-1 agreement with PyTorch float32 (benchmarks/bf16_agreement.py)."""
    bf16 = results.get("bf16")
    if not bf16:
        return []
    from bf16_agreement import render as render_bf16

    return [
        "### bfloat16 and the other backends: top-1 agreement", "",
        f"How often each backend and dtype keeps PyTorch float32's top-1 class, with the bundled Lite0 (real "
        f"ImageNet weights) and exact decoding, on the 5 sample photos and the 256 camera-sized JPEGs "
        f"({bf16['images']} images; `python benchmarks/bf16_agreement.py`). effnet's bfloat16 (torch and "
        "OpenVINO) keeps the stem and the first stage in float32, where most flips came from (torch also "
        "pools and classifies in float32); the row \"OpenVINO used directly\" compiles the same IR with "
        "bfloat16 precision for every layer, as OpenVINO's documentation shows. *top-2 gap* is the difference "
        "between the reference's two highest probabilities: the flips are near-ties.", "",
        render_bf16(bf16), ""]


def cli_section(results: Results) -> list[str]:
    """`effnet --help`'s time and the CLI's memory as the number of files grows."""
    cli = results.get("cli")
    if not cli:
        return []
    runs = ", ".join(f"{t:.3f}" for t in cli["help_runs_s"])
    return [
        "## The command line", "",
        f"`effnet --help`: median **{cli['help_median_s']:.3f} s** over {len(cli['help_runs_s'])} runs "
        f"({runs} s) after one warm-up run.", "",
        "Memory of `effnet classify` as the number of files grows (64×64 JPEGs, distinct hard links, a b0 "
        "whose preprocessing resizes to 64 px so that 10,000 files take seconds, batch 64, default workers): "
        "results stream out batch by batch and nothing accumulates.", "",
        *table(("files", "peak RSS, main process (MB)", "peak PSS, all processes (MB)", "wall (s)"), "rrrr",
               ((f"{row['files']:,}", fmt(row["peak_rss_mb"], 0), fmt(row["peak_tree_pss_mb"], 0),
                 fmt(row["wall_s"])) for row in cli["memory"])),
        ""]


def _ablation_forward(ab: dict[str, Any]) -> list[str]:
    """The forward ablation: each step's images/s and its gain over the step before, with and without the
    allocator setting."""
    plain = {r["name"]: r for r in ab["forward"] if not r["keep_freed_memory"]}
    kept = {r["name"]: r for r in ab["forward"] if r["keep_freed_memory"]}
    cells = []
    prev_a = prev_b = None
    for name in dict.fromkeys(list(plain) + list(kept)):
        a = plain.get(name, {}).get("images_per_s")
        b = kept.get(name, {}).get("images_per_s")
        diff = (plain.get(name) or kept.get(name)).get("max_rel_diff")
        chained = name.startswith("+") or name.startswith("eager")
        cells.append((name, fmt(a), times(a, prev_a) if chained and prev_a else "", fmt(b),
                      times(b, prev_b) if chained and prev_b else "", f"{diff:.1e}"))
        if chained:
            prev_a, prev_b = a, b
    return [
        "**Model forward**, b0 at 224, batch 16, float32 (benchmarks/ablation.py). Each step adds one change "
        "to the row above it; all variants run round-robin in one process and each reports its best of "
        f"{ab['forward'][0]['rounds'] if ab['forward'] else '?'} rounds. The right-hand columns repeat the "
        "whole set in a process where the allocator setting `optimize()` makes on the CPU "
        "(`keep_freed_memory()`) is on. "
        "*max rel. diff* is the largest logit difference from the plain model, relative to the largest logit.", "",
        *table(("step", "images/s", "× step before", "with allocator setting", "× step before", "max rel. diff"),
               "lrrrrr", cells),
        ""]


def ablation_section(results: Results) -> list[str]:
    """What each optimisation is worth: the model forward, end to end, and the forward under load."""
    ab = results.get("ablation")
    if not ab:
        return []
    lines = ["## What each optimisation is worth", "", *_ablation_forward(ab)]
    if ab.get("e2e"):
        lines += [
            "**End to end**, `effnet classify` in steady state with b0 (the 1,024 linked camera JPEG paths, "
            "images/s over the middle half of the records, the settings run one after another; *runs* lists "
            "each pass):", "",
            *table(("setting", "images/s", "runs"), "lrl",
                   ((row["name"], fmt(row["images_per_s"]), ", ".join(fmt(r) for r in row["runs"]))
                    for row in ab["e2e"])),
            ""]
    if ab.get("under_load"):
        lines += [
            "**Model forward while another program keeps one of the cores busy** (a Python busy loop; "
            "b0, batch 16). torch's OpenMP threads wait for each other at the end of every op; by default an "
            "idle one spins for a while before sleeping, and with a core taken that spinning starves the "
            "thread everyone waits for:", "",
            *table(("setting", "images/s"), "lr", ((row["name"], fmt(row["images_per_s"])) for row in ab["under_load"])),
            ""]
    return lines


def footer_paragraphs(results: Results) -> list[str]:
    """After the prose: how much other programs disturbed the run, and how closely the libraries' weights agree."""
    out = []
    dist = results.get("disturbance")
    if dist:
        out.append(f"Other programs on the machine: every measurement waited for idle CPUs and was repeated (up to "
                   f"{dist['tries']} times) when other programs used more than {dist['limit']:.0%} of the CPU time "
                   f"while it ran; of the {dist['measurements']} measurements kept, the most disturbed saw "
                   f"{dist['max_foreign_share']:.1%}.")
    mapping = results.get("mapping")
    if mapping:
        out.append("Same weights everywhere: the largest relative logit difference where two libraries compute the "
                   "same function: " + "; ".join(f"{k} vs effnet: {v:.1e}" for k, v in mapping.items()) + ".")
    return out

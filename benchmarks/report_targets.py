"""The targets table of the benchmark report, and why a target was not met, from one run's numbers.

Each target is a (target, measured, verdict) row; each unmet speed target gets one or
two sentences computed from the same run, so that the page explains its own misses.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from report_format import (
    CLI_LIBS, check, e2e_lookup, e2e_rss, fmt, forward_lookup, ratio_row, rounds,
)

Row = tuple[str, str, str]
BEST_RUNTIME = "default ÷ best(ONNX Runtime, OpenVINO)"
VS_TORCH = "default ÷ --backend torch"
VS_PIPELINE = "default ÷ transformers pipeline"
BF16 = "default bf16 ÷ OpenVINO bf16"
# `effnet classify` under load: the least share of its unloaded rate, by the number of busy processes.
LOAD_SHARE = {1: 0.40, 2: 0.25}
RSS_LIMIT_MB = 500


def sustained_share(sustained: dict[str, Any] | None, variant: str) -> tuple[float, list[float]] | None:
    """(median, per pair) of the CLI's steady-state images/s over its default backend's forward images/s."""
    if not sustained:
        return None
    pairs = sustained["pairs"] if variant == "b0" else [sustained.get(variant, {})]
    shares = [p["classify"] / p["forward"] for p in pairs
              if p.get("forward") and p.get("classify") and not math.isnan(p["classify"])]
    return (statistics.median(shares), shares) if shares else None


def prepare_samples() -> list[Any]:
    """The sample photos (the names a flip list is checked against)."""
    import prepare

    return sorted(prepare.SAMPLES.glob("*.jpg"))


def _at_least(r: dict[str, Any] | None, need: float) -> tuple[str, str]:
    """(measured, verdict) cells of a ratio target: its median ≥ ``need``."""
    return (rounds(r) if r else "–", check(r["median"] >= need) if r else "–")


def _forward_targets(fr: list[dict[str, Any]]) -> list[Row]:
    """The default backend's forward against the runtimes used directly and against `--backend torch`."""
    out = []
    for batch in (1, 16):
        out.append(((f"forward b0/224, float32, batch {batch}: the default backend ≥ 1.0× the best of ONNX Runtime "
                     "and OpenVINO used directly"), *_at_least(ratio_row(fr, BEST_RUNTIME, batch=batch), 1.0)))
    out.append(("forward b0/224, float32, batch 1: the default backend ≥ 2.5× `--backend torch`",
                *_at_least(ratio_row(fr, VS_TORCH, batch=1), 2.5)))
    bf = [r for r in (ratio_row(fr, BF16, batch=b) for b in (1, 16)) if r]
    out.append(("forward b0/224 in bfloat16: the default backend ≥ 1.0× OpenVINO bf16 used directly",
                "; ".join(f"batch {r['batch']}: {rounds(r)}" for r in bf) or "–",
                check(all(r["median"] >= 1.0 for r in bf)) if bf else "–"))
    return out


def _bf16_agreement_target(results: dict[str, Any]) -> Row:
    """bfloat16's top-1 agreement with float32 (OpenVINO used directly is shown, not judged)."""
    agreement = [row for row in (results.get("bf16") or {}).get("rows", []) if row["dtype"] == "bfloat16"
                 and not row["backend"].endswith("-direct")]
    samples = {path.name for path in prepare_samples()}

    def sample_flipped(row: dict[str, Any]) -> bool:
        return any(f["image"] in samples for f in row["flips"])

    return ("bfloat16 (every backend that has it): top-1 equal to float32 on the sample photos and on ≥ 99% of "
            "the camera-sized JPEGs",
            "; ".join(f"{row['backend']} {row['equal']}/{row['total']} ({100 * row['equal'] / row['total']:.1f}%)"
                      + (", sample photos all equal" if not sample_flipped(row) else ", a sample photo flipped")
                      for row in agreement) or "–",
            check(all(row["equal"] >= 0.99 * row["total"] and not sample_flipped(row)
                      for row in agreement)) if agreement else "–")


def _e2e_targets(er: list[dict[str, Any]]) -> list[Row]:
    """`effnet classify` end to end against `--backend torch` and the transformers pipeline."""
    out = []
    for name, label, need in ((VS_TORCH, "`effnet classify --backend torch`", 1.5),
                              (VS_PIPELINE, "the transformers pipeline (`num_workers=2`)", 5.0)):
        r = ratio_row(er, name, variant="b0")
        out.append(((f"end to end b0, {r['images'] if r else 1024:,} camera JPEG paths → top-5, steady state, "
                     f"batch 16: `effnet classify` ≥ {need:g}× {label}"), *_at_least(r, need)))
    out.append(("end to end b7: `effnet classify` ≥ 1.3× `--backend torch`",
                *_at_least(ratio_row(er, VS_TORCH, variant="b7"), 1.3)))
    return out


def _load_targets(loaded: dict[str, Any] | None) -> list[Row]:
    """`effnet classify`'s share of its unloaded rate with one and with two busy processes."""
    out = []
    for busy, need in LOAD_SHARE.items():
        row = next((x for x in (loaded or {}).get("rows", []) if x["lib"] == "effnet" and x["busy"] == busy), None)
        share = row.get("share") if row else None
        which = "a busy process pinned to one core" if busy == 1 else "one pinned to each core"
        out.append((f"`effnet classify` with {which}: ≥ {need:.0%} of its unloaded steady state",
                    (f"{share:.0%} ({fmt(row['images_per_s'])} images/s; rounds: "
                     f"{', '.join(f'{x:.0%}' for x in row['share_per_round'])})") if share is not None else "–",
                    check(share >= need) if share is not None else "–"))
    return out


def _rss_target(e2e: list[dict[str, Any]]) -> Row:
    """Peak RSS of the CLI's main process, with every backend for comparison."""
    target = f"peak RSS of the main process of `effnet classify` b0 ≤ {RSS_LIMIT_MB} MB"
    rss = {lib: e2e_rss(e2e, lib) for lib in CLI_LIBS}
    if rss["effnet"] is None:
        return (target, "–", "–")
    return (target, f"{rss['effnet']:.0f} MB (default); " + ", ".join(
        f"{lib.removeprefix('effnet-')} {v:.0f} MB" for lib, v in rss.items() if v is not None and lib != "effnet"),
            check(rss["effnet"] <= RSS_LIMIT_MB))


def speed_targets(results: dict[str, Any]) -> list[Row]:
    """(target, measured, verdict) for each "must be true" line of the backends work: medians of per-round ratios."""
    return [*_forward_targets(results.get("forward_ratios", [])), _bf16_agreement_target(results),
            *_e2e_targets(results.get("e2e_ratios", [])), *_load_targets(results.get("loaded")),
            _rss_target(results.get("e2e", []))]


def _library_targets(results: dict[str, Any]) -> list[Row]:
    """effnet's forward against torchvision and transformers, end to end against the pipeline (b7) and its own
    forward."""
    fwd = results.get("forward", [])
    e2e = results.get("e2e", [])
    out = []
    opt = forward_lookup(fwd, "b0", 16, "effnet")
    eng = forward_lookup(fwd, "b0", 16, "effnet-engine")
    tv = forward_lookup(fwd, "b0", 16, "torchvision")
    hf = forward_lookup(fwd, "b0", 16, "transformers")
    for name, other, need in (("torchvision channels-last", tv, 1.3), ("transformers", hf, 3.0)):
        if eng and other:
            out.append((f"forward b0/224/16: effnet ≥ {need:g}× {name}",
                        f"`optimize()` {eng / other:.2f}×" + (f" (with glibc's default allocator behaviour: "
                                                              f"{opt / other:.2f}×)" if opt else ""),
                        check(eng / other >= need)))
    for variant, need in (("b0", None), ("b7", 2.0)):
        ours = e2e_lookup(e2e, variant, "effnet")
        pipe = e2e_lookup(e2e, variant, "transformers")
        if ours and pipe and need:  # b0 against the pipeline: the 5× line above
            out.append((f"end to end {variant}: `effnet classify` ≥ {need:g}× the pipeline", f"{ours / pipe:.2f}×",
                        check(ours / pipe >= need)))
        share = sustained_share(results.get("sustained"), variant)
        if share is not None:
            median, shares = share
            out.append((f"end to end {variant}: ≥ 80% of effnet's own forward (default backend, batch 16), steady state",
                        f"{100 * median:.0f}%" + (f" (median of pairs: {', '.join(f'{100 * x:.0f}%' for x in shares)})"
                                                   if len(shares) > 1 else ""),
                        check(median >= 0.8)))
    return out


def _cli_targets(cli: dict[str, Any] | None) -> list[Row]:
    """`effnet --help`'s time, and the CLI's memory staying flat as the number of files grows."""
    if not cli:
        return []
    out = [("`effnet --help` < 0.3 s", f"{cli['help_median_s']:.3f} s (median of {len(cli['help_runs_s'])})",
            check(cli["help_median_s"] < 0.3))]
    mem = cli.get("memory", [])
    if len(mem) == 2:
        a, b = mem
        growth = b["peak_tree_pss_mb"] / a["peak_tree_pss_mb"] - 1
        out.append((f"`effnet classify` memory flat from {a['files']:,} to {b['files']:,} files",
                    f"peak {a['peak_rss_mb']:.0f} → {b['peak_rss_mb']:.0f} MB (main process), "
                    f"{a['peak_tree_pss_mb']:.0f} → {b['peak_tree_pss_mb']:.0f} MB (all processes)",
                    check(abs(growth) < 0.10 and a["ok"] and b["ok"])))
    return out


def targets(results: dict[str, Any]) -> list[Row]:
    """(target, measured, verdict) rows."""
    return [*speed_targets(results), *_library_targets(results), *_cli_targets(results.get("cli"))]


# ------------------------------------------------------------------ why a target was not met
def _forward_notes(results: dict[str, Any]) -> list[str]:
    """The default backend's forward (float32) below the runtimes used directly or below 2.5× torch."""
    fwd = results.get("forward", [])
    fr = results.get("forward_ratios", [])
    auto = (results.get("auto") or {}).get("b0", {})
    notes = []
    for batch in (1, 16):
        r = ratio_row(fr, BEST_RUNTIME, batch=batch)
        if r and r["median"] < 1.0:
            choice = auto.get(f"float32/{batch}", {}).get("backend", "?")
            notes.append(f"Forward at batch {batch}: the default backend ran {choice} (auto's choice in this run) and "
                         f"reached {r['median']:.2f}× the faster runtime used directly (rounds "
                         f"{min(r['per_round']):.2f}–{max(r['per_round']):.2f}): what is left is the wrapping around "
                         "the runtime (the input handed over as numpy, the outputs copied back), or auto's short "
                         "probe ranking the runtimes differently from the longer timed runs.")
    r = ratio_row(fr, VS_TORCH, batch=1)
    if r and r["median"] < 2.5:
        torch1 = forward_lookup(fwd, "b0", 1, "effnet-engine")
        best1 = max(filter(None, (forward_lookup(fwd, "b0", 1, lib) for lib in ("onnxruntime", "openvino"))),
                    default=None)
        if torch1 and best1:
            notes.append(f"Forward at batch 1 against `--backend torch`: on this CPU the fastest runtime used directly "
                         f"is itself only {best1 / torch1:.2f}× `optimize()` ({best1:.0f} against {torch1:.0f} images/s), "
                         "so no choice of backend reaches 2.5× here; the issue's 2.9–3.4× was an Intel Xeon with AMX.")
    return notes


def _bf16_notes(results: dict[str, Any]) -> list[str]:
    """The default backend's bfloat16 forward below OpenVINO bf16 used directly."""
    auto = (results.get("auto") or {}).get("b0", {})
    notes = []
    for batch in (1, 16):
        r = ratio_row(results.get("forward_ratios", []), BF16, batch=batch)
        if r and r["median"] < 1.0:
            choice = auto.get(f"bfloat16/{batch}", {}).get("backend", "?")
            notes.append(f"bfloat16 forward at batch {batch}: the default backend ran {choice} and reached "
                         f"{r['median']:.2f}× OpenVINO bf16 used directly. effnet keeps the stem and the first "
                         "stage in float32 so that bfloat16 keeps ≥ 99% of float32's top-1 classes (the agreement "
                         "table below); OpenVINO used directly runs every layer in bfloat16 and agrees less often.")
    return notes


def _e2e_notes(results: dict[str, Any]) -> list[str]:
    """b0 end to end below 1.5× `--backend torch` or 5× the transformers pipeline."""
    fwd = results.get("forward", [])
    er = results.get("e2e_ratios", [])
    notes = []
    pairs = [x for x in (results.get("sustained") or {}).get("pairs", []) if x.get("forward") and x.get("decode")]
    r = ratio_row(er, VS_TORCH, variant="b0")
    if r and r["median"] < 1.5:
        f_auto = forward_lookup(fwd, "b0", 16, "effnet-auto")
        f_torch = forward_lookup(fwd, "b0", 16, "effnet-engine")
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
    r = ratio_row(er, VS_PIPELINE, variant="b0")
    if r and r["median"] < 5.0:
        ours = e2e_lookup(results.get("e2e", []), "b0", "effnet")
        pipe = e2e_lookup(results.get("e2e", []), "b0", "transformers")
        notes.append(f"End to end against the transformers pipeline: with `num_workers=2` the pipeline decodes in "
                     f"parallel too ({fmt(pipe)} images/s against effnet's {fmt(ours)}); effnet's lead is then its "
                     "forward and its cheaper draft decode, bounded by the same decode-plus-forward ceiling.")
    return notes


def _b7_notes(results: dict[str, Any]) -> list[str]:
    """b7 end to end below 1.3× `--backend torch`: the forward, and auto's probe if it chose otherwise."""
    r = ratio_row(results.get("e2e_ratios", []), VS_TORCH, variant="b7")
    if not (r and r["median"] < 1.3):
        return []
    fwd = results.get("forward", [])
    a7 = forward_lookup(fwd, "b7", 16, "effnet-auto")
    t7 = forward_lookup(fwd, "b7", 16, "effnet-engine")
    c7 = ((results.get("auto") or {}).get("b7") or {}).get("float32/16") or {}
    probe = ", ".join(f"{b} {v:.2f}" for b, v in (c7.get("measured") or {}).items())
    return [f"b7 end to end against `--backend torch` ({r['median']:.2f}×): b7 is all model, so end to end "
            "follows the forward"
            + (f", where the default backend is {a7 / t7:.2f}× torch at batch 16 here" if a7 and t7 else "")
            + (f"; auto chose {c7['backend']} from its short probe ({probe} images/s), which the longer "
               "timed run did not bear out" if c7.get("backend") and c7["backend"] != "torch" else "")
            + "."]


def _load_and_memory_notes(results: dict[str, Any]) -> list[str]:
    """Under load below its share; the main process above the RSS limit."""
    notes = []
    for row in (results.get("loaded") or {}).get("rows", []):
        need = LOAD_SHARE.get(row["busy"])
        if row["lib"] == "effnet" and need and row.get("share") is not None and row["share"] < need:
            notes.append(f"Under load ({row['load']}): {row['share']:.0%} of the unloaded rate; each busy process "
                         "takes a core's worth of time slices from the model's threads and the decode workers alike.")
    rss = e2e_rss(results.get("e2e", []), "effnet")
    if rss is not None and rss > RSS_LIMIT_MB:
        base = results.get("import_torch_rss_mb")
        notes.append(f"Memory: the main process peaks at {rss:.0f} MB"
                     + (f"; `import torch` alone is {base:.0f} MB here" if base else "")
                     + ", and the CLI imports torch with every backend (the decode pipeline hands batches over as "
                     "tensors), so 500 MB is out of reach until the runtimes' path avoids torch.")
    return notes


def why_not_met(results: dict[str, Any]) -> list[str]:
    """One or two sentences per unmet speed target, computed from this run's numbers."""
    return [*_forward_notes(results), *_bf16_notes(results), *_e2e_notes(results), *_b7_notes(results),
            *_load_and_memory_notes(results)]

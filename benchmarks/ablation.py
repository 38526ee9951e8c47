"""What each step of the fast path is worth: the model forward with the steps added one at a time.

    python benchmarks/ablation.py --variant b0 --batch 16 --rounds 8 [--keep-freed-memory] [--compile]

All variants live in one process and are timed round-robin, so load from
other processes hits them alike; each reports its best round (the usual
micro-benchmark estimate, least disturbed by the machine's other work) and
its logits' largest difference from the plain model, relative to the largest
logit. Prints one JSON line per variant. ``--keep-freed-memory`` applies the
allocator setting the Engine uses before anything runs (it is process-wide,
so run.py starts a second process for it).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import prepare  # noqa: E402


def _folded(model: Any) -> Any:
    """The previous optimize(): batch norms folded, channels-last, nothing fused."""
    import torch

    from effnet_cli.runtime.fused import fold_batch_norms

    fast = fold_batch_norms(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast


def _fused(model: Any, **switches: bool) -> Any:
    import torch

    from effnet_cli.runtime.fused import fuse_model

    return fuse_model(_folded(model), **switches).to(memory_format=torch.channels_last)


def variants(model: Any, x: Any, *, compile: bool) -> list[tuple[str, Callable[[], Any], str]]:
    """(name, call returning logits, note), each step adding one optimisation to the one before."""
    import torch

    from effnet_cli.runtime.fused import optimize

    xc = x.contiguous(memory_format=torch.channels_last)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded = _folded(model)
    no_pad = _fused(model, onednn=False, fold_padding=True, in_place=False)
    in_place = _fused(model, onednn=False, fold_padding=True, in_place=True)
    # The allocator setting is this process's choice (--keep-freed-memory), not optimize()'s.
    fast = optimize(model, keep_freed_memory=False)
    fast_bf16 = optimize(model, dtype="bfloat16", keep_freed_memory=False)
    xb = xc.to(torch.bfloat16)
    out: list[tuple[str, Callable[[], Any], str]] = [
        ("eager, contiguous (the plain model)", lambda: model(x).logits, ""),
        ("+ channels-last", lambda: cl(xc).logits, ""),
        ("+ batch norm folded (the previous optimize)", lambda: folded(xc).logits, ""),
        ("+ padding folded into the kernels (no F.pad copies)", lambda: no_pad(xc).logits, ""),
        ("+ in place: activations, squeeze-excite gate, residual", lambda: in_place(xc).logits, ""),
        ("+ conv+bias+activation fused in oneDNN = optimize()", lambda: fast(xc).logits, ""),
        ("optimize(), torch.no_grad instead of inference_mode", lambda: fast(xc).logits, "no_grad"),
        ("optimize(dtype=bfloat16) (opt-in: not within 1e-4)", lambda: fast_bf16(xb).logits, ""),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            try:  # TorchScript freezing (+ MKLDNN conversion): possible on the unfused graph only
                traced = torch.jit.trace(_Logits(folded), xc, check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
                ofi = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(_Logits(folded), xc,
                                                                                        check_trace=False).eval()))
                out.append(("folded + torch.jit.trace + freeze (not kept)", lambda: frozen(xc), "no_grad"))
                out.append(("folded + jit freeze + optimize_for_inference (not kept)", lambda: ofi(xc), "no_grad"))
            except Exception as exc:  # noqa: BLE001 - report, do not abort the run
                print(json.dumps({"name": "torch.jit", "error": f"{type(exc).__name__}: {exc}"[:200]}))
    if compile:
        start = time.perf_counter()
        compiled = optimize(model, compile=True, keep_freed_memory=False)
        with torch.inference_mode():
            compiled(xc)
        took = time.perf_counter() - start
        out.append((f"optimize(compile=True) (opt-in; first call {took:.0f} s)", lambda: compiled(xc).logits, ""))
    return out


class _Logits:
    """Wraps a model so TorchScript sees a tensor -> tensor function."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.model(x, return_dict=False)[0]

        return Wrapped().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b0", choices=sorted(prepare.VARIANTS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--keep-freed-memory", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import torch

    from effnet_cli import load_pretrained
    from effnet_cli.runtime.fused import keep_freed_memory

    if args.keep_freed_memory:
        keep_freed_memory()
    model, _ = load_pretrained(str(prepare.effnet_dir(args.variant)))
    for p in model.parameters():
        p.requires_grad_(False)
    size = prepare.VARIANTS[args.variant][0]
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    todo = variants(model, x, compile=args.compile)
    best = [float("inf")] * len(todo)
    diffs = []
    with torch.inference_mode():
        reference = model(x).logits
    for name, call, mode in todo:
        ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
        with ctx:
            call()  # warm-up: oneDNN primitive creation, first-touch of buffers
            got = call().float()
        diffs.append(float((got - reference).abs().max() / reference.abs().max()))
    for _ in range(args.rounds):
        for i, (name, call, mode) in enumerate(todo):
            ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
            with ctx:
                start = time.perf_counter()
                call()
                best[i] = min(best[i], time.perf_counter() - start)
    for (name, _, _), t, diff in zip(todo, best, diffs):
        print(json.dumps({"name": name, "images_per_s": args.batch / t, "max_rel_diff": diff,
                          "keep_freed_memory": args.keep_freed_memory, "rounds": args.rounds,
                          "variant": args.variant, "batch": args.batch}), flush=True)


if __name__ == "__main__":
    main()

"""Warp + decode at batch size B: precision, memory layout and compilation variants, one run.

Usage::

    python bench/bench_renderer.py [--batch 16] [--iters 10] [--compile [--autotune]] [--json out.json]

The official network shapes with random weights (``ditto.backends.talkinghead.models``), CUDA only.
Variants, each timed with warm-up and ``torch.cuda.synchronize()`` (ms per frame) and compared
with an fp32 eager reference (max |Δ| of the (0, 1) image):

* ``autocast``: fp16 autocast, NCHW (the project's path until now; grid_sample stays fp32 under autocast);
* ``half``: weights and activations fp16, NCHW (grid_sample in fp16 too);
* ``half_cl``: fp16, channels-last (NDHWC for the 3-D convolutions, NHWC for the 2-D ones);
* ``autocast_cl``: fp16 autocast, channels-last;
* with ``--compile``: ``half_cl`` through ``torch.compile`` (compile time reported), and
  ``production``: the engine's compiled renderer (:class:`FrameRenderer` from ``compile_min_batch``
  on: fp16, channels-last, channels padded, narrow 3-D convolutions as depth taps);
* with ``--autotune`` too: ``production_autotune``, the same compiled with
  ``mode="max-autotune-no-cudagraphs"`` (Triton convolution and matmul kernels timed against
  cuDNN's; minutes of compilation).

Also prints the 15 CUDA kernels with the most time for ``autocast`` and the best variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ditto.backends.talkinghead.models import ONNX_IO, SPADEDecoder, WarpingNetwork  # noqa: E402
from ditto.backends.talkinghead.pipeline.render import FrameRenderer, channels_last  # noqa: E402
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner  # noqa: E402


def timed_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / iters


def top_kernels(fn, n: int = 15) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=70)
    return table.splitlines()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--autotune", action="store_true", help="with --compile: also the max-autotune production")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    warp, decoder = WarpingNetwork().to(dev).eval(), SPADEDecoder().to(dev).eval()
    b = args.batch
    f_s = torch.randn(b, 32, 16, 64, 64, device=dev)
    x_s = torch.randn(b, 21, 3, device=dev) * 0.2
    x_d = x_s + torch.randn(b, 21, 3, device=dev) * 0.02

    def make(w, d, dtype, autocast: bool, memory_format):
        f = f_s.to(dtype if not autocast else torch.float32)
        if memory_format is not None:
            f = f.contiguous(memory_format=torch.channels_last_3d)

        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
                return d(w(f, x_s.to(f.dtype), x_d.to(f.dtype)))

        return run

    with torch.inference_mode():
        reference = decoder(warp(f_s, x_s, x_d)).float()
    half_w, half_d = copy.deepcopy(warp).half(), copy.deepcopy(decoder).half()
    cl_w, cl_d = channels_last(copy.deepcopy(half_w)), channels_last(copy.deepcopy(half_d))
    acl_w, acl_d = channels_last(copy.deepcopy(warp)), channels_last(copy.deepcopy(decoder))
    variants = {
        "autocast": make(warp, decoder, torch.float32, True, None),
        "half": make(half_w, half_d, torch.float16, False, None),
        "half_cl": make(cl_w, cl_d, torch.float16, False, "cl"),
        "autocast_cl": make(acl_w, acl_d, torch.float32, True, "cl"),
    }
    results: dict = {"batch": b, "device": torch.cuda.get_device_name(), "variants": {}}
    if args.compile:
        t0 = time.perf_counter()
        cw, cd = torch.compile(cl_w), torch.compile(cl_d)
        run = make(cw, cd, torch.float16, False, "cl")
        run()
        torch.cuda.synchronize()
        results["compile_s"] = time.perf_counter() - t0
        variants["half_cl_compiled"] = run
        warp_runner = TorchRunner(warp, *ONNX_IO["warp_network"], device=dev)
        decoder_runner = TorchRunner(decoder, *ONNX_IO["decoder"], device=dev)
        modes = {"production": None, **({"production_autotune": "max-autotune-no-cudagraphs"} if args.autotune else {})}
        for name, mode in modes.items():
            renderer = FrameRenderer(warp_runner, decoder_runner, compile_min_batch=1, compile_mode=mode)
            forward = renderer.forward_for(b)

            def run_compiled(forward=forward) -> torch.Tensor:
                with torch.inference_mode():
                    return forward(f_s, x_s, x_d)

            t0 = time.perf_counter()
            run_compiled()
            torch.cuda.synchronize()
            results[f"{name}_compile_s"] = time.perf_counter() - t0
            variants[name] = run_compiled
    for name, run in variants.items():
        try:
            ms = timed_ms(run, args.iters) / b
            with torch.inference_mode():
                err = float((run().float() - reference).abs().max())
            results["variants"][name] = {"ms_per_frame": ms, "max_abs_vs_fp32": err}
        except Exception as exc:  # report and go on
            results["variants"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(name, results["variants"][name], flush=True)
    timings = {k: v["ms_per_frame"] for k, v in results["variants"].items() if "ms_per_frame" in v}
    best = min(timings, key=timings.get)
    results["best"] = best
    print(
        f"best: {best} {timings[best]:.2f} ms/frame vs autocast {timings['autocast']:.2f} "
        f"({timings['autocast'] / timings[best]:.2f}x)"
    )
    for name in dict.fromkeys(["autocast", best, *(["production"] if "production" in variants else [])]):
        print(f"--- top kernels: {name}")
        results.setdefault("top_kernels", {})[name] = lines = top_kernels(variants[name])
        print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

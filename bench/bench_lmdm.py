"""Where one LMDM DDIM window's time goes, and what cuts it, in one run.

Usage::

    python bench/bench_lmdm.py [--device cuda] [--batches 1,8,16] [--steps 10] [--json out.json]
    python bench/bench_lmdm.py --device cpu --batches 1 --steps 2 --repeats 1    # CPU smoke run

The full-size LMDM (47.8 M parameters, random weights: the cost is the architecture's), the
engine's own sampler (:class:`BatchedWindowSampler`: the whole S-step loop as one CUDA graph per
batch size, fp32 matmuls in TF32 as the engine sets them). Per batch size it prints milliseconds
per window (per session) for

* ``today``: the sampler as the engine runs it;
* ``bf16``: the same loop under bf16 autocast (reported with its largest deviation from ``today``);
* ``compiled``: the denoiser through ``torch.compile`` inside the same graph;

and, with ``--profile``, the CUDA kernels of one ``today`` window at the largest batch by total
time (``torch.profiler``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ditto.backends.talkinghead.models.lmdm import ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, MotionDecoder  # noqa: E402
from ditto.backends.talkinghead.pipeline.sampler import BatchedWindowSampler  # noqa: E402
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner  # noqa: E402

SEQ, MOTION, COND = 80, 265, 1103


def inputs(batch: int, steps: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(batch)
    kp_cond = torch.randn((batch, MOTION), generator=gen) * 0.1
    cond = torch.randn((batch, SEQ, COND), generator=gen)
    x_T = torch.randn((batch, SEQ, MOTION), generator=gen)
    noise = torch.randn((steps - 1, batch, SEQ, MOTION), generator=gen)
    return tuple(t.to(device) for t in (kp_cond, cond, x_T, noise))


def timed(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # capture / compile / warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats, out


class _Autocast(torch.nn.Module):
    """The LMDM under bf16 autocast, returning float32 (what the sampler's arithmetic expects)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            pred_noise, x_start = self.module(*args)
        return pred_noise.float(), x_start.float()


def variants(model: MotionDecoder, device: torch.device, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    def sampler(module: torch.nn.Module) -> BatchedWindowSampler:
        runner = TorchRunner(module, ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, device=device)
        return BatchedWindowSampler(runner, device=device, batch_sizes=batch_sizes)

    out = {"today": sampler(model)}
    if device.type == "cuda":
        out["bf16"] = sampler(_Autocast(model))
        out["compiled"] = sampler(torch.compile(model, dynamic=False))
    return out


def profile(sampler: BatchedWindowSampler, args: tuple[torch.Tensor, ...], steps: int, top: int) -> list[dict]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    # eager: inside a graph replay the profiler sees one launch, not the kernels
    denoise = sampler.denoise_fn
    kp_cond, cond, x_T, noise = args
    from ditto.backends.talkinghead.pipeline.sampler import DDIMSampler, sample_window

    ddim = DDIMSampler(tuple(x_T.shape), device=x_T.device)
    ddim.set_timesteps(steps, generator=torch.Generator(device=x_T.device).manual_seed(0))
    sample_window(denoise, kp_cond, cond, ddim, x_T=x_T)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        sample_window(denoise, kp_cond, cond, ddim, x_T=x_T)
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) or 1.0
    return [
        {
            "kernel": e.key[:90],
            "calls": e.count,
            "ms": e.device_time_total / 1000,
            "share": e.device_time_total / total,
        }
        for e in events[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="also list the kernels of one window at the largest batch")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as the device engine sets it
    batch_sizes = tuple(int(b) for b in args.batches.split(","))
    model = MotionDecoder().eval().to(device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "steps": args.steps,
        "ms_per_window": {},
        "max_abs_diff_vs_today": {},
    }
    samplers = variants(model, device, batch_sizes)
    with torch.inference_mode():
        for batch in batch_sizes:
            work = inputs(batch, args.steps, device)
            reference = None
            for name, sampler in samplers.items():
                seconds, out = timed(lambda s=sampler: s(args.steps, *work), device, args.repeats)
                results["ms_per_window"].setdefault(name, {})[batch] = 1000 * seconds / batch
                if reference is None:
                    reference = out
                else:
                    diff = float((out.float() - reference.float()).abs().max())
                    results["max_abs_diff_vs_today"].setdefault(name, {})[batch] = diff
        if args.profile and device.type == "cuda":
            results["kernels"] = profile(samplers["today"], inputs(batch_sizes[-1], args.steps, device), args.steps, 15)

    today = results["ms_per_window"]["today"]
    print(f"LMDM window ({args.steps} steps), ms per session-window on {results['device']}")
    print(f"{'batch':>6}" + "".join(f"{name:>14}" for name in samplers) + "   ratio vs today")
    for batch in batch_sizes:
        row = "".join(f"{results['ms_per_window'][name][batch]:>14.2f}" for name in samplers)
        ratios = " ".join(
            f"{name} {today[batch] / results['ms_per_window'][name][batch]:.2f}x"
            for name in samplers
            if name != "today"
        )
        print(f"{batch:>6}{row}   {ratios}")
    for name, diffs in results["max_abs_diff_vs_today"].items():
        print(f"max |{name} - today|: " + ", ".join(f"b{b} {d:.2e}" for b, d in diffs.items()))
    for k in results.get("kernels", []):
        print(f"{k['ms']:8.2f} ms {100 * k['share']:5.1f}% x{k['calls']:<5} {k['kernel']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

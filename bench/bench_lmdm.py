"""Where one LMDM DDIM window's time goes, and what cuts it, in one run.

Usage::

    python bench/bench_lmdm.py [--device cuda] [--batches 1,8,16] [--steps 10] [--json out.json]
    python bench/bench_lmdm.py --device cpu --batches 1,4 --steps 10 --repeats 3    # on the CPU

The full-size LMDM (47.8 M parameters, random weights: the cost is the architecture's), the
engine's own sampler (:class:`BatchedWindowSampler`: on CUDA the whole S-step loop as one graph
per batch size, fp32 matmuls in TF32 as the engine sets them). Per batch size it prints
milliseconds per window (per session) for

* ``per_step``: every step the whole official call (``MotionDecoder.forward``: the condition
  encoder and the memory's keys and values again each step), the path before the split;
* ``window``: what the engine runs: ``prepare_window`` once, then S ``denoise_step`` calls
  (reported with its largest deviation from ``per_step``, float rounding);
* ``compiled`` (CUDA): ``window`` with both methods through ``torch.compile``;

the arithmetic of one window of each (GFLOP per session, ``torch.utils.flop_counter``), and,
with ``--profile``, the kernels (CUDA) or operators (CPU) one window launches in
``per_step`` and ``window`` at the smallest and the largest batch, and the top ones of ``window``
by time (``torch.profiler``).
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
from ditto.backends.talkinghead.pipeline.sampler import (  # noqa: E402
    BatchedWindowSampler,
    DDIMSampler,
    PerStepDenoiser,
    WindowDenoiser,
    denoise_fn_from_runner,
    sample_window,
)
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


class CompiledWindowDenoiser:
    """The LMDM's window/step split with each method through ``torch.compile``. Shapes left to
    dynamo's automatic dynamism: ``dynamic=False`` would compile ``denoise_step`` once per step
    index (and hit the recompile limit); as it is, the step and, from the second batch size on,
    the batch become symbolic after one recompile each."""

    def __init__(self, model: MotionDecoder) -> None:
        self.prepare_window = torch.compile(model.prepare_window)
        self.denoise_step = torch.compile(model.denoise_step)


def variants(model: MotionDecoder, device: torch.device, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    runner = TorchRunner(model, ONNX_INPUT_NAMES, ONNX_OUTPUT_NAMES, device=device)

    def sampler(denoiser: WindowDenoiser | None) -> BatchedWindowSampler:
        return BatchedWindowSampler(runner, device=device, batch_sizes=batch_sizes, denoiser=denoiser)

    out = {"per_step": sampler(PerStepDenoiser(denoise_fn_from_runner(runner))), "window": sampler(None)}
    if device.type == "cuda":
        out["compiled"] = sampler(CompiledWindowDenoiser(model))
    return out


def eager_schedule(x_T: torch.Tensor, steps: int) -> DDIMSampler:
    """A DDIM schedule for one eager window of ``x_T``'s shape (what the profiler and the FLOP counter watch)."""
    ddim = DDIMSampler(tuple(x_T.shape), device=x_T.device)
    ddim.set_timesteps(steps, generator=torch.Generator(device=x_T.device).manual_seed(0))
    return ddim


def profile(sampler: BatchedWindowSampler, args: tuple[torch.Tensor, ...], steps: int) -> Any:
    """The profiler's averages over one eager window (inside a graph replay it sees one launch)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    kp_cond, cond, x_T, _ = args
    ddim = eager_schedule(x_T, steps)
    cuda = x_T.device.type == "cuda"
    sample_window(sampler.denoiser, kp_cond, cond, ddim, x_T=x_T)
    if cuda:
        torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        sample_window(sampler.denoiser, kp_cond, cond, ddim, x_T=x_T)
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    if not cuda:  # operators that launch work, not their wrappers (aten::linear → aten::addmm)
        events = [e for e in events if e.self_cpu_time_total > 0 and e.key.startswith("aten::")]
    return events


def gflop_per_session(sampler: BatchedWindowSampler, args: tuple[torch.Tensor, ...], steps: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    kp_cond, cond, x_T, _ = args
    ddim = eager_schedule(x_T, steps)
    with FlopCounterMode(display=False) as counter:
        sample_window(sampler.denoiser, kp_cond, cond, ddim, x_T=x_T)
    return counter.get_total_flops() / 1e9 / x_T.shape[0]


def launches(events: Any) -> int:
    return int(sum(e.count for e in events))


def top_by_time(events: Any, top: int) -> list[dict]:
    def own_time(e: Any) -> float:
        return e.device_time_total if e.device_time_total else e.self_cpu_time_total

    ranked = sorted(events, key=own_time, reverse=True)
    total = sum(own_time(e) for e in ranked) or 1.0
    return [
        {"name": e.key[:90], "calls": e.count, "ms": own_time(e) / 1000, "share": own_time(e) / total}
        for e in ranked[:top]
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="also count the kernels (operators on the CPU) of a window")
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
        "max_abs_diff_vs_per_step": {},
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
                    results["max_abs_diff_vs_per_step"].setdefault(name, {})[batch] = diff
        work = inputs(batch_sizes[0], args.steps, device)
        results["gflop_per_window"] = {
            name: gflop_per_session(samplers[name], work, args.steps) for name in ("per_step", "window")
        }
        if args.profile:
            counts: dict[str, dict[int, int]] = {}
            for batch in sorted({batch_sizes[0], batch_sizes[-1]}):
                work = inputs(batch, args.steps, device)
                for name in ("per_step", "window"):
                    events = profile(samplers[name], work, args.steps)
                    counts.setdefault(name, {})[batch] = launches(events)
                    if name == "window" and batch == batch_sizes[-1]:
                        window_events = events  # the prepared window at the largest batch: its top kernels
            results["launches_per_window"] = counts
            results["top_window"] = top_by_time(window_events, 15)

    base = results["ms_per_window"]["per_step"]
    print(f"LMDM window ({args.steps} steps), ms per session-window on {results['device']}")
    print(f"{'batch':>6}" + "".join(f"{name:>14}" for name in samplers) + "   ratio vs per_step")
    for batch in batch_sizes:
        row = "".join(f"{results['ms_per_window'][name][batch]:>14.2f}" for name in samplers)
        ratios = " ".join(
            f"{name} {base[batch] / results['ms_per_window'][name][batch]:.2f}x"
            for name in samplers
            if name != "per_step"
        )
        print(f"{batch:>6}{row}   {ratios}")
    for name, diffs in results["max_abs_diff_vs_per_step"].items():
        print(f"max |{name} - per_step|: " + ", ".join(f"b{b} {d:.2e}" for b, d in diffs.items()))
    print("GFLOP per session-window: " + ", ".join(f"{n} {g:.1f}" for n, g in results["gflop_per_window"].items()))
    what = "kernels" if device.type == "cuda" else "operators"
    for name, by_batch in results.get("launches_per_window", {}).items():
        print(f"{what} per window, {name}: " + ", ".join(f"b{b} {n}" for b, n in by_batch.items()))
    for k in results.get("top_window", []):
        print(f"{k['ms']:8.2f} ms {100 * k['share']:5.1f}% x{k['calls']:<5} {k['name']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where the warp + decode time goes, layer by layer, and three ways to run the 7×7×7 mask convolution.

Usage::

    python bench/bench_warp_layers.py [--batch 16] [--iters 10] [--json out.json]
    python bench/bench_warp_layers.py --device cpu --batch 1 --depth 4 --size 16   # equivalence only

Official network shapes, random weights, fp16 channels-last (the compiled renderer's precision and
layout), eager. Two parts, one run:

* **layers**: every convolution of the warp network and the decoder timed with CUDA events
  (forward hooks, ms per batch and share of the whole), so the next optimisation targets the
  layers that hold the time;
* **mask convolution** (``dense_motion_network.mask``: 142 → 22 channels, 7×7×7, on a 16×64×64
  volume — about 140 GFLOP a frame): ``conv3d`` as it is, with channels zero-padded to multiples
  of 8 (what the compiled renderer runs today), against the same convolution as seven 2-D
  convolutions over the depth slices (one per depth tap, summed; ``depth_taps``), each with
  max |Δ| against the direct fp32 result.
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
from torch import nn  # noqa: E402

from ditto.backends.talkinghead.models import SPADEDecoder, WarpingNetwork  # noqa: E402
from ditto.backends.talkinghead.pipeline.render import (  # noqa: E402
    DepthTapConv3d,
    _PaddedConv,
    channels_last,
    depth_tap_convs,
    pad_conv_channels,
)


def timed_ms(fn, iters: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return 1000 * (time.perf_counter() - t0) / iters


def layer_times(modules: dict[str, nn.Module], run, iters: int) -> dict[str, float]:
    """ms per call of every conv in ``modules`` (name prefix -> module), from CUDA events."""
    events: dict[str, list] = {}
    hooks = []
    for prefix, root in modules.items():
        for name, module in root.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                key = f"{prefix}.{name}"

                def before(_m, _i, key=key):
                    start = torch.cuda.Event(enable_timing=True)
                    start.record()
                    events.setdefault(key, []).append([start, None])

                def after(_m, _i, _o, key=key):
                    end = torch.cuda.Event(enable_timing=True)
                    end.record()
                    events[key][-1][1] = end

                hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    for _ in range(iters):
        run()
    torch.cuda.synchronize()
    for h in hooks:
        h.remove()
    return {k: sum(a.elapsed_time(b) for a, b in v) / iters for k, v in events.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--depth", type=int, default=16, help="mask-conv volume depth (16 in Ditto)")
    p.add_argument("--size", type=int, default=64, help="mask-conv volume height and width (64 in Ditto)")
    p.add_argument("--compile", action="store_true", help="also time the compiled renderer, today's and with taps")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    dtype = torch.float16 if cuda else torch.float32
    layout = torch.channels_last_3d
    report: dict = {"batch": args.batch, "device": torch.cuda.get_device_name() if cuda else "cpu"}

    # --- the mask convolution, three ways ------------------------------------------------------
    torch.manual_seed(0)
    conv = nn.Conv3d(142, 22, kernel_size=7, padding=3).to(device)
    x = torch.randn(args.batch, 142, args.depth, args.size, args.size, device=device)
    with torch.inference_mode():
        reference = conv(x).float()
        variants = {"conv3d_padded": _PaddedConv(conv, 8), "depth_taps": DepthTapConv3d(conv)}
        xh = x.to(dtype).contiguous(memory_format=layout)
        mask = {}
        for name, module in variants.items():
            module = channels_last(module.to(dtype))
            out = module(xh)
            mask[name] = {
                "max_abs_diff": float((out.float() - reference).abs().max()),
                "ms": timed_ms(lambda: module(xh), args.iters, device),
            }
            print(f"mask conv {name:14s} {mask[name]['ms']:8.2f} ms/batch  max|Δ| {mask[name]['max_abs_diff']:.2e}")
        flop = 2 * 142 * 22 * 343 * args.depth * args.size**2 * args.batch
        for name in mask:
            mask[name]["tflops"] = flop / mask[name]["ms"] / 1e9
        report["mask_conv"] = mask
    if not cuda:
        print(json.dumps(report, indent=1))
        return 0

    # --- every layer of warp + decode ------------------------------------------------------------
    warp = channels_last(WarpingNetwork().to(device).eval().half())
    decoder = channels_last(SPADEDecoder().to(device).eval().half())
    f_s = torch.randn(args.batch, 32, 16, 64, 64, device=device).half().contiguous(memory_format=layout)
    x_s = (torch.randn(args.batch, 21, 3, device=device) * 0.2).half()
    x_d = (torch.randn(args.batch, 21, 3, device=device) * 0.2).half()
    with torch.inference_mode():

        def run():
            return decoder(warp(f_s, x_s, x_d))

        total = timed_ms(run, args.iters, device)
        layers = layer_times({"warp": warp, "decoder": decoder}, run, args.iters)
    report["total_ms"] = total
    report["layers_ms"] = dict(sorted(layers.items(), key=lambda kv: -kv[1]))
    print(
        f"\nwarp + decode, eager fp16 channels-last, batch {args.batch}: {total:.2f} ms "
        f"({total / args.batch:.2f} ms/frame); convolutions {sum(layers.values()):.2f} ms"
    )
    for name, ms in list(report["layers_ms"].items())[:20]:
        print(f"  {ms:8.2f} ms  {100 * ms / total:5.1f} %  {name}")

    # --- the whole renderer: 3-D convolutions as depth taps, up to N output channels -------------
    variants = {"padded (today)": None, "taps <= 22 ch": 22, "taps <= 32 ch": 32, "taps, all 3-D": 10**6}

    def prepared(module: nn.Module, max_out: int | None) -> nn.Module:
        module = copy.deepcopy(module)
        if max_out is not None:
            depth_tap_convs(module, max_out)
        return channels_last(pad_conv_channels(module))

    whole = {}
    with torch.inference_mode():
        baseline = None
        for name, max_out in variants.items():
            w, d = prepared(warp, max_out), prepared(decoder, None)
            out = d(w(f_s, x_s, x_d)).float()
            baseline = out if baseline is None else baseline
            whole[name] = {
                "ms_per_frame": timed_ms(lambda: d(w(f_s, x_s, x_d)), args.iters, device) / args.batch,
                "max_abs_diff_vs_today": float((out - baseline).abs().max()),
            }
            print(
                f"eager {name:16s} {whole[name]['ms_per_frame']:6.2f} ms/frame  "
                f"max|Δ| {whole[name]['max_abs_diff_vs_today']:.2e}"
            )
        if args.compile:
            best = min((n for n in variants if variants[n] is not None), key=lambda n: whole[n]["ms_per_frame"])
            for name in ("padded (today)", best):
                w = torch.compile(prepared(warp, variants[name]), dynamic=False)
                d = torch.compile(prepared(decoder, None), dynamic=False)
                t0 = time.perf_counter()
                w_out = d(w(f_s, x_s, x_d)).float()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
                ms = timed_ms(lambda: d(w(f_s, x_s, x_d)), args.iters, device) / args.batch
                whole[f"compiled {name}"] = {
                    "ms_per_frame": ms,
                    "compile_s": compile_s,
                    "max_abs_diff_vs_today": float((w_out - baseline).abs().max()),
                }
                print(f"compiled {name:16s} {ms:6.2f} ms/frame  (compile {compile_s:.0f} s)")
    report["renderer"] = whole
    today, new = whole.get("compiled padded (today)"), [v for k, v in whole.items() if k.startswith("compiled taps")]
    if today and new:
        print(
            f"compiled renderer: {today['ms_per_frame']:.2f} -> {new[0]['ms_per_frame']:.2f} ms/frame "
            f"({today['ms_per_frame'] / new[0]['ms_per_frame']:.2f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

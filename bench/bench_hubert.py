"""HuBERT-large timings: onnxruntime vs the torch module built from the same ONNX file.

Usage::

    python bench/bench_hubert.py [--onnx FILE] [--device cpu|cuda] [--batch 1 4 16] [--reps 10] [--json out.json]

Without ``--onnx`` it exports the random-weight stand-in of ``make_test_checkpoints --hubert
large`` to a temporary file first (timed). Then it times loading (onnxruntime session; weights
mapped onto :class:`HubertLarge`), one 6480-sample window through onnxruntime (CPU provider
unless onnxruntime has CUDA and ``--device cuda``), and the torch module on ``--device`` for each
``--batch`` size (fp32; on CUDA also fp16 autocast), with warm-up and ``torch.cuda.synchronize()``
around every timed call, in interleaved rounds (median of ``--reps``; onnxruntime's worker
threads do not spin between calls); per-window figures are the batch time divided by the batch size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ditto.backends.talkinghead.aux_models.hubert import HubertFeatureExtractor, split_len  # noqa: E402
from ditto.backends.talkinghead.aux_models.hubert_torch import check_module_matches_runner, hubert_module_from_onnx  # noqa: E402
from ditto.backends.talkinghead.models.hubert import export_hubert_onnx  # noqa: E402
from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner  # noqa: E402
from ditto.tools.aux_test_models import build_hubert_large_stand_in  # noqa: E402


def timed(fn, reps: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="a HuBERT .onnx (default: export the random-weight stand-in)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict[str, object] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    tmp = None
    path = args.onnx
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_hubert_")
        path = Path(tmp.name) / "hubert_streaming_fix_kv.onnx"
        t0 = time.perf_counter()
        module = build_hubert_large_stand_in(0)
        result["build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_hubert_onnx(module, path)
        result["export_s"] = time.perf_counter() - t0
        del module
    result["file_gb"] = path.stat().st_size / 1e9
    t0 = time.perf_counter()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy threads between calls
    runner = OnnxRunner(path, device=device, session_options=options)
    result["ort_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    module = hubert_module_from_onnx(path).to(device)
    result["torch_load_s"] = time.perf_counter() - t0
    result["rel_err_vs_ort"] = check_module_matches_runner(module, runner, path)

    windows = (np.random.default_rng(0).standard_normal((max(args.batch), split_len())) * 0.1).astype(np.float32)
    ort_ext = HubertFeatureExtractor(runner)
    calls = {"ort_window_ms": (lambda: ort_ext.encode(windows[0]), 1)}
    for fp16 in (False, True) if device.type == "cuda" else (False,):
        ext = HubertFeatureExtractor(module=module, autocast_fp16=fp16)
        for b in args.batch:
            batch = torch.from_numpy(windows[:b]).to(device)
            calls[f"torch{'_fp16' if fp16 else ''}_b{b}_window_ms"] = (lambda e=ext, x=batch: e.encode_batch(x), b)
    # Interleaved rounds, so that load from elsewhere on the machine hits every engine alike.
    samples: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(args.reps):
        for key, (fn, b) in calls.items():
            samples[key].append(1e3 * timed(fn, 1, device) / b)
    result.update({key: statistics.median(v) for key, v in samples.items()})
    for key, value in result.items():
        print(f"{key:28s} {value:.4g}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

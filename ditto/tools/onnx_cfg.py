"""Point a TensorRT cfg pkl at the ``ditto_onnx`` checkpoints.

Upstream ships cfg pkls only for the TensorRT and PyTorch folders; the model file
names inside a pkl are joined to ``--data_root`` as they are, so
``v0.4_hubert_cfg_trt*.pkl`` cannot serve ``ditto_onnx/`` directly. This writes a
copy whose engine names are the ONNX ones (``decoder_fp16.engine`` →
``decoder.onnx``) and whose setup options (emo table, blink template, ``ch_info``…)
are untouched::

    python -m ditto.tools.onnx_cfg checkpoints/ditto_cfg/v0.4_hubert_cfg_trt_online.pkl \\
        checkpoints/ditto_cfg/v0.4_hubert_cfg_onnx_online.pkl
    python streaming_server.py --data_root checkpoints/ditto_onnx \\
        --cfg_pkl checkpoints/ditto_cfg/v0.4_hubert_cfg_onnx_online.pkl

Note: the official ``ditto_onnx/warp_network.onnx`` uses a TensorRT-only
GridSample3D plugin op, which onnxruntime cannot run; use a warp network exported
with standard ops (``ditto.backends.talkinghead.models.export_onnx``) in its place.

Not imported by the runtime.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ditto.backends.talkinghead.config import dump_cfg_pkl, onnx_cfg_dict, read_cfg_dict
from ditto.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trt_pkl", type=Path, help="a cfg pkl naming ditto_trt engines")
    parser.add_argument("out_pkl", type=Path, help="where to write the ditto_onnx cfg pkl")
    args = parser.parse_args(argv)
    try:
        out = dump_cfg_pkl(args.out_pkl, onnx_cfg_dict(read_cfg_dict(args.trt_pkl)))
    except ConfigError as exc:
        print(f"onnx_cfg: error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build TensorRT engines for THIS GPU and TensorRT from the ``ditto_onnx`` checkpoints.

The shipped ``ditto_trt_Ampere_Plus`` engines only run under TensorRT 8.6.1 on
compute capability ≥ 8.0. Anywhere else, rebuild them::

    python -m ditto.tools.build_engines --onnx_dir ../checkpoints/ditto_onnx --out_dir ../checkpoints/ditto_trt_local
    python streaming_server.py --data_root ../checkpoints/ditto_trt_local \\
        --cfg_pkl ../checkpoints/ditto_cfg/v0.4_hubert_cfg_trt_online.pkl

The plan follows the official conversion (docs/pipeline.md §2; upstream
``scripts/cvt_onnx_to_trt.py``), written against TensorRT's Python API:

* every ``*.onnx`` in ``--onnx_dir`` except ``warp_network_ori`` →
  ``<name>_fp16.engine`` or ``<name>_fp32.engine`` (the names the trt cfg pkls use);
* fp16 for everything except ``motion_extractor``, ``hubert``, ``wavlm`` and
  ``lmdm*``, which stay fp32; IO tensors stay float32 either way;
* builder optimization level 5; hardware-compatibility level Ampere_Plus when
  the GPU is compute capability ≥ 8.0 (``--hardware_compat``);
* ``hubert``: one optimization profile ``input_values`` min (1, 3240), opt
  (1, 6480), max (1, 12960) (``trt_bindings.SHAPE_PROFILES``);
* batch (not upstream: for a device engine that batches the work of many
  sessions): every ONNX input whose axis 0 is dynamic gets that axis in the
  profile, min/opt/max from ``--batch`` (default 1,8,16); its other axes are
  the ONNX's static sizes or the table above. The ONNX twins of the test tree
  (``make_test_checkpoints``) export stitch_network, warp_network, decoder and
  the LMDM so; ONNX files fixed at batch 1 (the official ones, docs/pipeline.md §4.1)
  give batch-1 engines, which the runner drives one call per row;
* ``warp_network``: the GridSample3D plugin library is loaded into the
  builder's plugin registry and serialized with the engine
  (``plugins_to_serialize``); FP16 with PREFER_PRECISION_CONSTRAINTS and every
  layer whose name contains ``GridSample`` pinned to fp32. The plugin is copied
  next to the engines, where the server looks for it.

``--dry_run`` prints the plan without TensorRT. Existing engines are kept
unless ``--force``. Not imported by the runtime.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ditto.backends.talkinghead.runtime.tensorrt_runner import PLUGIN_FILE_NAME
from ditto.backends.talkinghead.runtime.trt_bindings import DYNAMIC, SHAPE_PROFILES, ShapeProfile

logger = logging.getLogger("build_engines")
#: ONNX files the official script skips (a plugin-free warp network variant).
SKIPPED_MODELS = frozenset({"warp_network_ori"})
#: Models kept in fp32 (official conversion script); plus every name starting with "lmdm".
FP32_MODELS = frozenset({"motion_extractor", "hubert", "wavlm"})
#: Substring of the warp network's layer names that are pinned to fp32.
GRID_SAMPLE_LAYER = "GridSample"
#: Layer types whose precision is not set (no arithmetic of their own): upstream's exclusion list.
PRECISION_NEUTRAL_LAYERS = frozenset(
    {
        "SHAPE",
        "ASSERTION",
        "SHUFFLE",
        "IDENTITY",
        "CONSTANT",
        "CONCATENATION",
        "GATHER",
        "SLICE",
        "CONDITION",
        "CONDITIONAL_INPUT",
        "CONDITIONAL_OUTPUT",
        "FILL",
        "NON_ZERO",
        "ONE_HOT",
    }
)
OPT_LEVEL = 5

HardwareCompat = Literal["auto", "ampere_plus", "none"]


@dataclass(frozen=True, slots=True)
class BatchRange:
    """min / opt / max of the batch axis (axis 0) in an optimization profile.

    Raises:
        ValueError: not 1 <= min <= opt <= max.
    """

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch range needs 1 <= min <= opt <= max, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """``"1,8,16"`` → (1, 8, 16); ``"4"`` → (4, 4, 4)."""
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"batch range must be MIN,OPT,MAX or N (integers), got {text!r}") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise ValueError(f"batch range must be MIN,OPT,MAX or N, got {text!r}")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min},{self.opt},{self.max}"


#: Sessions a device engine batches: up to 16 rows, tuned for 8.
DEFAULT_BATCH = BatchRange(1, 8, 16)


@dataclass(frozen=True, slots=True)
class BuildStep:
    """One ONNX → engine conversion."""

    model: str  # ONNX stem, e.g. "lmdm_v0.4_hubert"
    onnx: Path
    engine: Path
    fp16: bool
    profiles: Mapping[str, ShapeProfile] = field(default_factory=dict)  # dynamic input → min/opt/max
    batch: BatchRange | None = None  # range of the batch axis; None: the ONNX fixes it (batch 1)
    plugin: Path | None = None  # plugin library loaded into the builder and serialized (warp_network)
    fp32_layers: str | None = None  # layers whose name contains this are pinned to fp32
    ampere_plus: bool = False  # hardware-compatibility level Ampere_Plus
    opt_level: int = OPT_LEVEL

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def describe(self) -> str:
        extra = [f"opt level {self.opt_level}"]
        if self.ampere_plus:
            extra.append("hardware-compat Ampere_Plus")
        extra.append(
            f"batch {self.batch.min}..{self.batch.max} opt {self.batch.opt}"
            if self.batch
            else "batch fixed by the ONNX"
        )
        for name, p in self.profiles.items():
            extra.append(f"profile {name} min {list(p.min)} opt {list(p.opt)} max {list(p.max)}")
        if self.plugin is not None:
            extra.append(f"plugin {self.plugin.name}")
        if self.fp32_layers:
            extra.append(f"layers *{self.fp32_layers}* fp32")
        return f"{self.onnx.name} -> {self.engine.name} [{self.precision}; {'; '.join(extra)}]"


def is_fp32_model(model: str) -> bool:
    return model in FP32_MODELS or model.startswith("lmdm")


def engine_name(model: str) -> str:
    return f"{model}_{'fp32' if is_fp32_model(model) else 'fp16'}.engine"


def onnx_input_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """The graph inputs of an ONNX file (initializers excluded): name → shape, -1 for a symbolic axis.

    Raises:
        ValueError: the ``onnx`` package is missing or the file does not parse.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ValueError(
            f"reading {os.fspath(path)} needs the 'onnx' package ({exc}). Fix: pip install -r requirements-ditto.txt"
        ) from None
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and OSError alike
        raise ValueError(f"{os.fspath(path)} is not a readable ONNX model: {exc}") from None
    inits = {i.name for i in model.graph.initializer}
    return {
        v.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
        for v in model.graph.input
        if v.name not in inits
    }


def plan_profiles(
    model: str, inputs: Mapping[str, tuple[int, ...]], batch: BatchRange
) -> tuple[dict[str, ShapeProfile], BatchRange | None]:
    """The optimization profile of one model and its batch range (None: no input has a dynamic axis 0).

    Args:
        model: the ONNX stem (a key of ``SHAPE_PROFILES`` for its length axes).
        inputs: its graph inputs (:func:`onnx_input_shapes`).
        batch: the range given to every dynamic axis 0.

    Raises:
        ValueError: a dynamic axis other than 0 that ``SHAPE_PROFILES`` has no range for.
    """
    profiles = dict(SHAPE_PROFILES.get(model, {}))
    batched = False
    for name, shape in inputs.items():
        if DYNAMIC not in shape:
            profiles.pop(name, None)  # static in this ONNX: nothing to range over
            continue
        base = profiles.get(name)
        if base is None:
            if DYNAMIC in shape[1:]:
                raise ValueError(
                    f"{model}: input {name!r} {list(shape)} has a dynamic axis after the batch axis "
                    "and no profile for it (trt_bindings.SHAPE_PROFILES)"
                )
            base = ShapeProfile(shape, shape, shape)
        if shape[0] == DYNAMIC:
            base = ShapeProfile((batch.min, *base.min[1:]), (batch.opt, *base.opt[1:]), (batch.max, *base.max[1:]))
            batched = True
        profiles[name] = base
    return profiles, (batch if batched else None)


def plan_builds(
    onnx_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    plugin: str | os.PathLike[str] | None = None,
    ampere_plus: bool = False,
    models: Sequence[str] | None = None,
    batch: BatchRange = DEFAULT_BATCH,
) -> list[BuildStep]:
    """The conversions for every ONNX model in ``onnx_dir`` (sorted by name).

    Args:
        onnx_dir: folder of ``<name>.onnx`` files (the ``ditto_onnx`` layout).
        out_dir: where ``<name>_fp16/_fp32.engine`` go.
        plugin: the GridSample3D plugin (default ``onnx_dir/libgrid_sample_3d_plugin.so``).
        ampere_plus: build hardware-compatible (Ampere and newer) engines.
        models: only these ONNX stems (``None``: all).
        batch: profile range of every ONNX input's dynamic axis 0 (:func:`plan_profiles`).

    Raises:
        ValueError: a name in ``models`` has no ONNX file; an ONNX file does not
            parse or has a dynamic axis without a profile.
    """
    src, dst = Path(os.fspath(onnx_dir)), Path(os.fspath(out_dir))
    available = sorted(p.stem for p in src.glob("*.onnx") if p.stem not in SKIPPED_MODELS)
    chosen = available if models is None else list(dict.fromkeys(models))
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise ValueError(f"no ONNX file for {unknown} in {src} (found: {', '.join(available) or 'none'})")
    plugin_path = Path(os.fspath(plugin)) if plugin is not None else src / PLUGIN_FILE_NAME
    steps = []
    for model in chosen:
        is_warp = model == "warp_network"
        profiles, batch_range = plan_profiles(model, onnx_input_shapes(src / f"{model}.onnx"), batch)
        steps.append(
            BuildStep(
                model=model,
                onnx=src / f"{model}.onnx",
                engine=dst / engine_name(model),
                fp16=not is_fp32_model(model),
                profiles=profiles,
                batch=batch_range,
                plugin=plugin_path if is_warp else None,
                fp32_layers=GRID_SAMPLE_LAYER if is_warp else None,
                ampere_plus=ampere_plus,
            )
        )
    return steps


# -- building (needs TensorRT and a GPU) --------------------------------------------------------


class BuildError(RuntimeError):
    pass


def _layer_type_name(layer: Any) -> str:
    return str(layer.type).rsplit(".", 1)[-1]


def build_engine(step: BuildStep, trt: Any, trt_logger: Any, *, workspace_bytes: int | None = None) -> bytes:
    """Build one serialized engine with TensorRT's Python API.

    Raises:
        BuildError: the ONNX does not parse or the build fails.
    """
    major = int(str(trt.__version__).split(".")[0])
    builder = trt.Builder(trt_logger)
    if step.plugin is not None:
        if not step.plugin.is_file():
            raise BuildError(f"{step.model}: plugin library {step.plugin} not found (pass --plugin PATH)")
        builder.get_plugin_registry().load_library(str(step.plugin))
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(step.onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{step.onnx}: ONNX parse failed: {' | '.join(errors) or 'unknown error'}")
    config = builder.create_builder_config()
    config.builder_optimization_level = step.opt_level
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if step.ampere_plus:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if step.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if step.fp32_layers:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if step.fp32_layers in layer.name and _layer_type_name(layer) not in PRECISION_NEUTRAL_LAYERS:
                layer.precision = trt.float32
                pinned += 1
        logger.info("%s: %d layer(s) named *%s* pinned to fp32", step.model, pinned, step.fp32_layers)
    if step.profiles:
        profile = builder.create_optimization_profile()
        for name, p in step.profiles.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    if step.plugin is not None:
        config.plugins_to_serialize = [str(step.plugin)]
    # TensorRT 8.6 lets only one execution context at a time use an optimization profile unless
    # profile sharing is on (always on from TensorRT 10): then several runners (backends sharing
    # one engine file) may each hold a context.
    if (
        (step.plugin is not None or step.profiles)
        and major < 10
        and hasattr(trt.PreviewFeature, "PROFILE_SHARING_0806")
    ):
        config.set_preview_feature(trt.PreviewFeature.PROFILE_SHARING_0806, True)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise BuildError(f"{step.model}: TensorRT could not build the engine (see the log above)")
    return bytes(blob)


def _gpu_ampere_plus() -> bool | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability()[0] >= 8


def _batch_argument(text: str) -> BatchRange:
    try:
        return BatchRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ditto.tools.build_engines",
        description="Build Ditto TensorRT engines for this GPU and TensorRT from the ditto_onnx checkpoints "
        "(fp16 except motion_extractor/hubert/lmdm; warp network with the GridSample3D plugin, "
        "grid-sample layers fp32; HuBERT input profile 3240..12960 samples; a batch profile "
        "on every ONNX input with a dynamic batch axis).",
    )
    p.add_argument("--onnx_dir", type=Path, required=True, help="the ditto_onnx folder (*.onnx + plugin .so)")
    p.add_argument("--out_dir", type=Path, required=True, help="where the .engine files are written")
    p.add_argument("--plugin", type=Path, help=f"GridSample3D plugin library (default: ONNX_DIR/{PLUGIN_FILE_NAME})")
    p.add_argument(
        "--models", nargs="+", metavar="NAME", help="build only these (ONNX file stems, e.g. warp_network hubert)"
    )
    p.add_argument(
        "--batch",
        type=_batch_argument,
        default=DEFAULT_BATCH,
        metavar="MIN,OPT,MAX",
        help=f"profile range of the batch axis of every ONNX input that has a dynamic one "
        f"(default {DEFAULT_BATCH}; N = N,N,N); ONNX files fixed at batch 1 stay batch 1",
    )
    p.add_argument(
        "--hardware_compat",
        choices=["auto", "ampere_plus", "none"],
        default="auto",
        help="auto: Ampere_Plus when this GPU is compute capability >= 8.0 (as upstream)",
    )
    p.add_argument("--workspace_gb", type=float, help="builder workspace limit in GiB (default: TensorRT's)")
    p.add_argument("--force", action="store_true", help="rebuild engines that already exist")
    p.add_argument("--dry_run", action="store_true", help="print the plan and exit (no TensorRT needed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prog = "build_engines"
    if not args.onnx_dir.is_dir():
        print(f"{prog}: error: --onnx_dir {args.onnx_dir} is not a folder", file=sys.stderr)
        return 2
    compat: HardwareCompat = args.hardware_compat
    if compat == "auto":
        detected = _gpu_ampere_plus()
        ampere_plus = bool(detected)
        if detected is None and not args.dry_run:
            print(
                f"{prog}: error: no CUDA GPU visible to torch; engines must be built on the GPU that runs them",
                file=sys.stderr,
            )
            return 1
    else:
        ampere_plus = compat == "ampere_plus"
    try:
        steps = plan_builds(
            args.onnx_dir,
            args.out_dir,
            plugin=args.plugin,
            ampere_plus=ampere_plus,
            models=args.models,
            batch=args.batch,
        )
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if not steps:
        print(f"{prog}: error: no .onnx files in {args.onnx_dir}", file=sys.stderr)
        return 2
    for step in steps:
        state = "exists, kept" if step.engine.is_file() and not args.force else "build"
        print(f"{step.describe()}  ({state})")
    if args.dry_run:
        return 0

    try:
        import tensorrt as trt
    except ImportError as exc:
        print(
            f"{prog}: error: the 'tensorrt' package is not importable ({exc}). "
            "Fix: pip install -r requirements-trt.txt",
            file=sys.stderr,
        )
        return 1
    trt_logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(trt_logger, "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for step in steps:
        if step.engine.is_file() and not args.force:
            continue
        started = time.monotonic()
        logger.info("building %s ...", step.engine.name)
        try:
            blob = build_engine(
                step, trt, trt_logger, workspace_bytes=int(args.workspace_gb * (1 << 30)) if args.workspace_gb else None
            )
        except BuildError as exc:
            logger.error("%s", exc)
            failed.append(step.model)
            continue
        tmp = step.engine.with_name(step.engine.name + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, step.engine)
        logger.info("wrote %s (%.1f MB, %.0f s)", step.engine, len(blob) / 1e6, time.monotonic() - started)
    for plugin in {s.plugin for s in steps if s.plugin is not None and s.plugin.is_file()}:
        target = args.out_dir / PLUGIN_FILE_NAME  # where the server looks first
        if not target.exists() or (args.force and plugin.resolve() != target.resolve()):
            shutil.copy2(plugin, target)
            logger.info("copied %s next to the engines", plugin)
    if failed:
        print(f"{prog}: error: failed to build {', '.join(failed)}", file=sys.stderr)
        return 1
    print(
        f"done. Serve with: python streaming_server.py --data_root {args.out_dir} "
        "--cfg_pkl <ditto_cfg>/v0.4_hubert_cfg_trt_online.pkl (or the offline trt pkl)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loading the Ditto models once per server: :class:`DittoModels`.

The cfg pkl names every model file; each is opened by the engine its suffix selects (PyTorch,
ONNX or TensorRT) and checked up front, so a missing, truncated or mismatched file ends startup
with a :class:`~ditto.errors.ConfigError` that names it. The loaded models build the renderer
and the one :class:`~ditto.backends.talkinghead.engine.DeviceEngine` that drives the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ditto.backends.talkinghead.aux_models.face_detector import FaceDetector
from ditto.backends.talkinghead.aux_models.face_mesh import BlazeFaceMesh, MediaPipeFaceLandmarker
from ditto.backends.talkinghead.aux_models.hubert import HubertFeatureExtractor
from ditto.backends.talkinghead.aux_models.hubert_torch import load_hubert_extractor
from ditto.backends.talkinghead.aux_models.landmarks import Landmark106, Landmark203
from ditto.backends.talkinghead.config import DittoCfg, ModelCfg
from ditto.backends.talkinghead.engine import DEFAULT_BATCH_SIZES, LAUNCHED_BATCHES, DeviceEngine
from ditto.backends.talkinghead.models import RENDERER_MODELS
from ditto.backends.talkinghead.pipeline.registration import SourceRegistrar
from ditto.backends.talkinghead.pipeline.render import FrameRenderer
from ditto.backends.talkinghead.runtime.base import ModelRunner, batch_invariant
from ditto.backends.talkinghead.runtime.loader import MODEL_IO, load_runner
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner
from ditto.errors import ConfigError

__all__ = ["DittoModels", "resolve_device"]


def resolve_device(setting: str) -> torch.device:
    """``auto`` → CUDA when available, else the CPU.

    Raises:
        ConfigError: ``cuda`` asked for but not available.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {setting!r} requested but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(setting)


def _aux_device(path: Path | None, device: torch.device) -> torch.device:
    """Where an auxiliary model (detector, landmarks, mesh, HuBERT) runs.

    Their wrappers pre- and post-process on the host, so an ONNX file that onnxruntime can only
    run on the CPU (no CUDA provider installed) is run there directly: keeping its runner on
    CUDA would only add a device round trip (and two host syncs) around every call.
    """
    if device.type != "cuda" or path is None or path.suffix.lower() != ".onnx":
        return device
    try:
        import onnxruntime as ort
    except ImportError:
        return device  # the runner reports the missing library
    return device if "CUDAExecutionProvider" in ort.get_available_providers() else torch.device("cpu")


def _renderer_factory(kind: str) -> Callable[[Mapping[str, Tensor]], torch.nn.Module]:
    cls = RENDERER_MODELS[kind]
    return lambda _state_dict: cls()


def _load_model(kind: str, model: ModelCfg, device: torch.device, trt_plugins: Sequence[Path] = ()) -> ModelRunner:
    """A runner for one cfg section; renderer/LMDM files must carry the official tensor names.

    Raises:
        ConfigError: the file is missing, unreadable, or does not fit ``kind``.
    """
    plugins = trt_plugins if model.engine == "tensorrt" else ()
    factory = _renderer_factory(kind) if kind in RENDERER_MODELS else None
    runner = load_runner(kind, model.model_path, module_factory=factory, device=device, plugin_paths=plugins)
    expected = MODEL_IO.get(kind)
    if expected is not None and (
        set(runner.input_names) != set(expected.input_names)
        or not set(expected.output_names) <= set(runner.output_names)
    ):
        raise ConfigError(
            f"{model.model_path}: tensors {list(runner.input_names)} -> {list(runner.output_names)} do not "
            f"match the {kind} model ({list(expected.input_names)} -> {list(expected.output_names)})"
        )
    return runner


def _load_face_mesh(cfg: DittoCfg, device: torch.device) -> BlazeFaceMesh | MediaPipeFaceLandmarker:
    section = cfg.landmark478
    if section.engine == "ori":
        try:
            return MediaPipeFaceLandmarker(section.task_path)  # type: ignore[arg-type]
        except ImportError as exc:
            raise ConfigError(f"{section.task_path} needs the mediapipe package ({exc})") from None
        except (RuntimeError, ValueError, OSError) as exc:
            raise ConfigError(f"cannot load MediaPipe face landmarker {section.task_path}: {exc}") from None
    blaze = load_runner(
        "blaze_face",
        section.blaze_face_model_path,  # type: ignore[arg-type]
        device=_aux_device(section.blaze_face_model_path, device),
    )
    mesh = load_runner(
        "face_mesh",
        section.face_mesh_model_path,  # type: ignore[arg-type]
        device=_aux_device(section.face_mesh_model_path, device),
    )
    return BlazeFaceMesh(blaze, mesh)


def _check_lmdm_dims(runner: ModelRunner, cfg: DittoCfg) -> None:
    """A PyTorch LMDM must have the window shape the cfg promises (engines are checked on first use)."""
    if not isinstance(runner, TorchRunner):
        return
    a2m = cfg.audio2motion
    module = runner.module
    found = (
        getattr(module, "nfeats", None),
        getattr(module, "seq_len", None),
        getattr(module, "cond_feature_dim", None),
    )
    wanted = (a2m.motion_feat_dim, a2m.seq_frames, a2m.audio_feat_dim)
    if found != wanted:
        raise ConfigError(
            f"{a2m.model.model_path}: LMDM has (motion, frames, condition) dims {found}, but {cfg.path} "
            f"audio2motion_cfg says {wanted}"
        )


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class DittoModels:
    """Every model of one checkpoint tree, loaded once and shared read-only by all sessions.

    The hot-path models (HuBERT, LMDM, stitching, warp, decoder) are driven only by
    :attr:`engine`, the device's one owner, which batches every session's work; registration
    (detector, landmarks, mesh, extractors) is serialised by the backend.
    """

    registrar: SourceRegistrar
    hubert: HubertFeatureExtractor
    lmdm: ModelRunner
    stitch: ModelRunner
    warp: ModelRunner
    decoder: ModelRunner
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES  # the engine's batches (CUDA graphs per size)
    compile_min_batch: int | None = None  # CUDA: render batches this large run compiled fp16 networks
    launched_batches: int = LAUNCHED_BATCHES  # batches in flight at once (1: each resolved before the next)
    motion_stream: bool = False  # CUDA: HuBERT and LMDM on a stream of their own, beside the render
    # Built from the runners above (dataclasses.replace builds new ones).
    renderer: FrameRenderer = dataclasses.field(init=False, repr=False, compare=False)
    engine: DeviceEngine = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "renderer",
            FrameRenderer(
                batch_invariant(self.warp),
                batch_invariant(self.decoder),
                batch_sizes=self.batch_sizes,
                compile_min_batch=self.compile_min_batch,
            ),
        )
        object.__setattr__(self, "engine", self.make_engine())

    def make_engine(self, **engine_options: Any) -> DeviceEngine:
        """A device engine over these models (the models' own is :attr:`engine`; tests make more)."""
        return DeviceEngine(
            hubert=self.hubert,
            lmdm=batch_invariant(self.lmdm),
            stitch=batch_invariant(self.stitch),
            renderer=self.renderer,
            device=self.warp.device,
            batch_sizes=self.batch_sizes,
            **{"launched_batches": self.launched_batches, "motion_stream": self.motion_stream, **engine_options},
        )

    @classmethod
    def load(
        cls,
        cfg: DittoCfg,
        device: torch.device | str,
        *,
        trt_plugins: Sequence[Path] = (),
        batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
        compile_min_batch: int | None = None,
        motion_stream: bool = False,
    ) -> DittoModels:
        """Open every model file of ``cfg`` on ``device`` (the pkl's per-model device is not used).

        ``trt_plugins``: libraries a TensorRT warp network engine needs (the GridSample3D
        plugin, see :func:`~ditto.backends.talkinghead.preflight.trt_plugin_paths`).

        Raises:
            ConfigError: a file is missing, truncated, of an unsupported type, or its
                tensors (names, keys, shapes) do not fit the model; the message names the file.
        """
        device = torch.device(device)

        # Small files first, so that a bad checkpoint is reported before the big ones load; the
        # MediaPipe landmarker (which holds native resources) last, once nothing else can fail.
        def aux(section: ModelCfg) -> torch.device:
            return _aux_device(section.model_path, device)

        detector = FaceDetector(_load_model("insightface_det", cfg.insightface_det, aux(cfg.insightface_det)))
        landmark106 = Landmark106(_load_model("landmark106", cfg.landmark106, aux(cfg.landmark106)))
        landmark203 = Landmark203(_load_model("landmark203", cfg.landmark203, aux(cfg.landmark203)))
        # On CUDA an ONNX HuBERT-large runs as a torch module (onnxruntime may lack the CUDA provider).
        hubert = load_hubert_extractor(
            cfg.wav2feat.model_path, _load_model("hubert", cfg.wav2feat, aux(cfg.wav2feat)), device
        )
        stitch = _load_model("stitch_network", cfg.stitch_network, device)
        appearance = _load_model("appearance_extractor", cfg.appearance_extractor, device)
        motion = _load_model("motion_extractor", cfg.motion_extractor, device)
        lmdm = _load_model("lmdm", cfg.lmdm, device)
        _check_lmdm_dims(lmdm, cfg)
        warp = _load_model("warp_network", cfg.warp_network, device, trt_plugins)
        decoder = _load_model("decoder", cfg.decoder, device)
        registrar = SourceRegistrar(
            detector=detector,
            landmark106=landmark106,
            landmark203=landmark203,
            face_mesh=_load_face_mesh(cfg, device),
            motion_extractor=motion,
            appearance_extractor=appearance,
            device=device,
        )
        return cls(
            registrar=registrar,
            hubert=hubert,
            lmdm=lmdm,
            stitch=stitch,
            warp=warp,
            decoder=decoder,
            batch_sizes=tuple(batch_sizes),
            compile_min_batch=compile_min_batch,
            motion_stream=motion_stream,
        )

    def close(self) -> None:
        self.engine.close()
        face_mesh = self.registrar.face_mesh
        if isinstance(face_mesh, MediaPipeFaceLandmarker):
            face_mesh.close()

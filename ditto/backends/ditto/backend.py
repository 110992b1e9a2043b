"""The Ditto backend: the official checkpoints (PyTorch, ONNX or TensorRT) behind
:class:`~ditto.backends.base.AnimatorBackend`.

Loading (once per server, :class:`DittoModels`): the cfg pkl names every model
file; each is opened by the engine its suffix selects and checked up front, so a
missing, truncated or mismatched file ends startup with a :class:`ConfigError`
that names it. Registration (:meth:`DittoBackend.register_source`) runs
:mod:`~ditto.backends.ditto.pipeline.registration` once per avatar. Each session
(:class:`DittoStream`) owns the mutable state — the DDIM noise drawn from a
generator seeded with the session seed, the blink schedule's RNG, the LMDM window
recursion and the relative-driving references — and shares the models::

    audio ─ HuBERT windows ─ ConditionHandler ─ LMDM windows (DDIM) ─ motion rows (265)
          ─ MotionStitcher (+ stitching net) ─ warp ─ decode ─ paste back ─ VideoFrame

Offline cfgs (``online_mode`` False) generate the whole clip at :meth:`DittoStream.finish`
like upstream's offline SDK; online cfgs cut the audio into the streaming HuBERT
windows as it arrives and render frames as soon as their LMDM window is done
(facts sheet §5). Either way a session yields exactly ``ceil(samples / 640)`` frames.

From the LMDM output to the pasted frame everything stays on the device; the one
device→host copy is the final uint8 frame, into pinned memory without blocking, so
the next frame is already being rendered while this one is copied and handed out.
On CUDA, the PyTorch renderer runs under fp16 autocast as upstream's PyTorch path does
(the official engines are fp16 there), and a PyTorch LMDM samples each window as one
replayed CUDA graph; warp + decode are one replayed CUDA graph too. Both graphs are
captured once per loaded model set (:meth:`DittoBackend.warmup`, done at server start)
and shared by every session. Offline sessions emit each frame as soon as the window
recursion has fixed its motion (:func:`~ditto.backends.ditto.pipeline.audio2motion.iter_motion_offline`),
not after the last window.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto import SAMPLES_PER_FRAME, frames_for_samples
from ditto.backends.base import VideoFrame
from ditto.backends.ditto.aux_models.face_detector import FaceDetector
from ditto.backends.ditto.aux_models.face_mesh import BlazeFaceMesh, MediaPipeFaceLandmarker
from ditto.backends.ditto.aux_models.hubert import HubertFeatureExtractor, StreamingWindower
from ditto.backends.ditto.aux_models.hubert_torch import load_hubert_extractor
from ditto.backends.ditto.aux_models.landmarks import Landmark106, Landmark203
from ditto.backends.ditto.config import Audio2MotionCfg, DittoCfg, ModelCfg, SetupOptions
from ditto.backends.ditto.models import RENDERER_MODELS
from ditto.backends.ditto.pipeline.audio2motion import (
    MotionWindowing,
    OnlineAudio2Motion,
    as_v_min_max,
    iter_motion_offline,
    motion_to_vector,
    vector_to_motion,
)
from ditto.backends.ditto.pipeline.blink import ctrl_for_frame
from ditto.backends.ditto.pipeline.condition import (
    ConditionHandler,
    cond_width,
    condition_source_from_ch_info,
    condition_source_from_source,
)
from ditto.backends.ditto.pipeline.motion_stitch import MotionStitcher
from ditto.backends.ditto.pipeline.putback import PastePlan, paste_back
from ditto.backends.ditto.pipeline.registration import CropOptions, SourceRegistrar, fit_to_max_size
from ditto.backends.ditto.pipeline.render import FrameRenderer
from ditto.backends.ditto.pipeline.sampler import (
    CudaGraphSampler,
    DDIMSampler,
    SharedGraphCache,
    denoise_fn_from_runner,
)
from ditto.backends.ditto.pipeline.stages import MotionChunk, SourceInfo
from ditto.backends.ditto.preflight import load_checked_cfg, trt_plugin_paths
from ditto.backends.ditto.runtime.base import ModelRunner
from ditto.backends.ditto.runtime.loader import MODEL_IO, load_runner
from ditto.backends.ditto.runtime.tensorrt_runner import TensorRTRunner
from ditto.backends.ditto.runtime.torch_runner import TorchRunner
from ditto.errors import BackendError, ConfigError, ErrorCode, MediaError
from ditto.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["DittoAvatar", "DittoBackend", "DittoModels", "DittoStream", "resolve_device"]


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


def _features_to_device(features: np.ndarray, device: torch.device) -> Tensor:
    """HuBERT features (host float32) → the pipeline device (the only host→device copy per window;
    staged through pinned memory so that it does not block the host)."""
    host = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


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


# -- models ---------------------------------------------------------------------------------------


def _renderer_factory(kind: str) -> Callable[[Mapping[str, Tensor]], torch.nn.Module]:
    cls = RENDERER_MODELS[kind]
    return lambda _state_dict: cls()


def _load_model(kind: str, model: ModelCfg, device: torch.device,
                trt_plugins: Sequence[Path] = ()) -> ModelRunner:
    """A runner for one cfg section; renderer/LMDM files must carry the official tensor names.

    Raises:
        ConfigError: the file is missing, unreadable, or does not fit ``kind``.
    """
    plugins = trt_plugins if model.engine == "tensorrt" else ()
    factory = _renderer_factory(kind) if kind in RENDERER_MODELS else None
    runner = load_runner(kind, model.model_path, module_factory=factory, device=device, plugin_paths=plugins)
    expected = MODEL_IO.get(kind)
    if expected is not None and (set(runner.input_names) != set(expected.input_names)
                                 or not set(expected.output_names) <= set(runner.output_names)):
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
    blaze = load_runner("blaze_face", section.blaze_face_model_path,  # type: ignore[arg-type]
                        device=_aux_device(section.blaze_face_model_path, device))
    mesh = load_runner("face_mesh", section.face_mesh_model_path,  # type: ignore[arg-type]
                       device=_aux_device(section.face_mesh_model_path, device))
    return BlazeFaceMesh(blaze, mesh)


def _check_lmdm_dims(runner: ModelRunner, cfg: DittoCfg) -> None:
    """A PyTorch LMDM must have the window shape the cfg promises (engines are checked on first use)."""
    if not isinstance(runner, TorchRunner):
        return
    a2m = cfg.audio2motion
    module = runner.module
    found = (getattr(module, "nfeats", None), getattr(module, "seq_len", None),
             getattr(module, "cond_feature_dim", None))
    wanted = (a2m.motion_feat_dim, a2m.seq_frames, a2m.audio_feat_dim)
    if found != wanted:
        raise ConfigError(
            f"{a2m.model.model_path}: LMDM has (motion, frames, condition) dims {found}, but {cfg.path} "
            f"audio2motion_cfg says {wanted}"
        )


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class DittoModels:
    """Every model of one checkpoint tree, loaded once and shared read-only by all sessions.

    Runners are safe to call from several threads; each session drives TensorRT engines through
    contexts of its own (:meth:`for_session`); registration (MediaPipe) is serialised by the backend.
    """

    registrar: SourceRegistrar
    hubert: HubertFeatureExtractor
    lmdm: ModelRunner
    stitch: ModelRunner
    warp: ModelRunner
    decoder: ModelRunner
    # Built from the runners above (dataclasses.replace builds new ones): warp + decode, on CUDA
    # one shared graph; the LMDM graphs shared by every session (None off CUDA / for engines).
    renderer: FrameRenderer = dataclasses.field(init=False, repr=False, compare=False)
    lmdm_graphs: SharedGraphCache | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "renderer", FrameRenderer(self.warp, self.decoder))
        graphs = None
        lmdm = self.lmdm
        if isinstance(lmdm, TorchRunner) and lmdm.device.type == "cuda" and torch.cuda.is_available():
            module = lmdm.module
            graphs = SharedGraphCache(
                denoise_fn_from_runner(lmdm), shape=(1, int(module.seq_len), int(module.nfeats)),
                cond_shape=(1, int(module.seq_len), int(module.cond_feature_dim)), device=lmdm.device)
        object.__setattr__(self, "lmdm_graphs", graphs)

    @classmethod
    def load(cls, cfg: DittoCfg, device: torch.device | str, *, trt_plugins: Sequence[Path] = ()) -> DittoModels:
        """Open every model file of ``cfg`` on ``device`` (the pkl's per-model device is not used).

        ``trt_plugins``: libraries a TensorRT warp network engine needs (the GridSample3D
        plugin, see :func:`~ditto.backends.ditto.preflight.trt_plugin_paths`).

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
        hubert = load_hubert_extractor(cfg.wav2feat.model_path, _load_model("hubert", cfg.wav2feat, aux(cfg.wav2feat)),
                                       device)
        stitch = _load_model("stitch_network", cfg.stitch_network, device)
        appearance = _load_model("appearance_extractor", cfg.appearance_extractor, device)
        motion = _load_model("motion_extractor", cfg.motion_extractor, device)
        lmdm = _load_model("lmdm", cfg.lmdm, device)
        _check_lmdm_dims(lmdm, cfg)
        warp = _load_model("warp_network", cfg.warp_network, device, trt_plugins)
        decoder = _load_model("decoder", cfg.decoder, device)
        registrar = SourceRegistrar(detector=detector, landmark106=landmark106, landmark203=landmark203,
                                    face_mesh=_load_face_mesh(cfg, device), motion_extractor=motion,
                                    appearance_extractor=appearance, device=device)
        return cls(registrar=registrar, hubert=hubert, lmdm=lmdm, stitch=stitch, warp=warp, decoder=decoder)

    def for_session(self) -> DittoModels:
        """The models one session drives: TensorRT engines get an execution context of their own
        per session (a context holds per-inference state); every other runner is shared as is."""
        hot_path = {"lmdm": self.lmdm, "stitch": self.stitch, "warp": self.warp, "decoder": self.decoder}
        forked = {name: runner.fork() for name, runner in hot_path.items() if isinstance(runner, TensorRTRunner)}
        return dataclasses.replace(self, **forked) if forked else self

    def close(self) -> None:
        face_mesh = self.registrar.face_mesh
        if isinstance(face_mesh, MediaPipeFaceLandmarker):
            face_mesh.close()


# -- backend --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class DittoAvatar:
    """A registered portrait; read-only, shared by every session that animates it."""

    width: int
    height: int
    source: SourceInfo  # motion, appearance volume, eye condition (on the device)
    paste_plans: tuple[PastePlan, ...]  # paste-back of each source frame, precomputed


class DittoBackend:
    """Ditto behind the animator interface.

    Args:
        cfg: the parsed cfg pkl (:func:`~ditto.backends.ditto.config.load_cfg`).
        device: where every model and tensor lives.
        models: already loaded models to share (default: load ``cfg``'s files).
        max_size: the server's cap on the output's longest side; the cfg's own
            ``max_size`` option applies too (the smaller wins).
        setup_options: setup options that override the pkl's ``default_kwargs``
            (upstream's setup kwargs, e.g. ``{"emo": 3}``).
        trt_plugins: plugin libraries for a TensorRT warp network (when loading ``cfg``).

    Raises:
        ConfigError: a model file or a setup option does not fit.
    """

    name = "ditto"

    def __init__(self, cfg: DittoCfg, device: torch.device | str = "cpu", *, models: DittoModels | None = None,
                 max_size: int | None = None, setup_options: Mapping[str, Any] | None = None,
                 trt_plugins: Sequence[Path] = ()) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self._setup_overrides = dict(setup_options or {})
        self.options: SetupOptions = cfg.setup_options(**self._setup_overrides)
        self._server_max_size = max_size
        self.max_size = self.options.max_size if max_size is None else min(max_size, self.options.max_size)
        self._check_options()
        self._owns_models = models is None
        self.models = models if models is not None else DittoModels.load(cfg, self.device, trt_plugins=trt_plugins)
        self._registration_lock = threading.Lock()
        # Online mode starts every session with the features of overlap_v2 frames of silence.
        self._silence_features: Tensor | None = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
        if self.options.online_mode:
            silence = np.zeros(self.options.overlap_v2 * SAMPLES_PER_FRAME, np.float32)
            self._silence_features = _features_to_device(self.models.hubert.offline_features(silence), self.device)

    @classmethod
    def from_settings(cls, settings: Settings) -> DittoBackend:
        """The backend the server settings describe (``--data_root``, ``--cfg_pkl``, ``--device``, ``--max_size``).

        Raises:
            ConfigError: a clear one-line reason (bad pkl, missing/mismatched model file, no CUDA,
                TensorRT unusable here without ``--fallback``).
        """
        if settings.cfg_pkl is None or settings.data_root is None:
            raise ConfigError("the Ditto backend needs --data_root and --cfg_pkl")
        device = resolve_device(settings.device)
        cfg = load_checked_cfg(settings)  # a TensorRT tree is checked first (and --fallback applied)
        logger.info("Loading Ditto models from %s (%s) on %s", cfg.data_root, cfg.path.name, device)
        backend = cls(cfg, device, max_size=settings.max_size, trt_plugins=trt_plugin_paths(cfg, settings))
        backend.warmup()
        return backend

    def warmup(self) -> None:
        """On CUDA: capture the shared warp+decode graph and the LMDM graph for this backend's
        ``sampling_timesteps`` now, so that no session pays for it (cuDNN autotuning included).
        Nothing to do on the CPU."""
        if self.device.type != "cuda":
            return
        with torch.inference_mode():
            self.models.renderer.capture()
            if self.models.lmdm_graphs is not None:
                self.models.lmdm_graphs.graph_for(self.options.sampling_timesteps)
        torch.cuda.synchronize(self.device)

    def with_options(self, **setup_options: Any) -> DittoBackend:
        """A backend sharing these models, with more setup options overridden (e.g. ``emo=3``).

        Avatars registered by either backend work in both unless a ``crop_*`` or
        ``max_size`` option differs.
        """
        return DittoBackend(self.cfg, self.device, models=self.models, max_size=self._server_max_size,
                            setup_options={**self._setup_overrides, **setup_options})

    def _check_options(self) -> None:
        opts, a2m = self.options, self.cfg.audio2motion
        if not 0 <= opts.overlap_v2 < a2m.seq_frames:
            raise ConfigError(f"{self.cfg.path}: overlap_v2={opts.overlap_v2} must be in [0, {a2m.seq_frames})")
        layout = cond_width(use_emo=a2m.use_emo, use_eye_open=a2m.use_eye_open, use_eye_ball=a2m.use_eye_ball,
                            use_sc=a2m.use_sc)
        if layout != a2m.audio_feat_dim:
            raise ConfigError(f"{self.cfg.path}: the use_* flags give a {layout}-wide condition, "
                              f"but audio_feat_dim is {a2m.audio_feat_dim}")

    def register_source(self, image_rgb: np.ndarray) -> DittoAvatar:
        """Analyse a portrait (RGB uint8) once: crop, motion, appearance, eye condition, paste plan.

        Raises:
            SourceError: no face found (code ``no_face``).
        """
        image = fit_to_max_size(np.ascontiguousarray(image_rgb), self.max_size)
        with self._registration_lock, torch.inference_mode():
            registered = self.models.registrar.register_image(image, CropOptions.from_setup(self.options))
        height, width = image.shape[:2]
        return DittoAvatar(width=width, height=height, source=registered.source, paste_plans=registered.paste_plans)

    def open_stream(self, avatar: DittoAvatar, *, seed: int) -> DittoStream:
        """Start a session; ``seed`` fixes its diffusion noise and blink timing."""
        return DittoStream(models=self.models.for_session(), audio2motion=self.cfg.audio2motion, options=self.options,
                           device=self.device, avatar=avatar, seed=seed, silence_features=self._silence_features)

    def close(self) -> None:
        if self._owns_models:
            self.models.close()


# -- sessions -------------------------------------------------------------------------------------


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # onnxruntime and TensorRT report device allocation failures as plain runtime errors
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclasses.dataclass(eq=False)
class _SessionState:
    """Everything one session mutates; dropped as a whole on close or out-of-memory."""

    stitcher: MotionStitcher
    windowing: MotionWindowing
    condition: ConditionHandler
    v_min_max: Tensor | None
    online: OnlineAudio2Motion | None  # online mode only
    windower: StreamingWindower | None  # online mode only
    audio: list[np.ndarray] = dataclasses.field(default_factory=list)  # offline mode: the whole clip
    pending_windows: collections.deque[np.ndarray] = dataclasses.field(default_factory=collections.deque)
    pending_rows: collections.deque[tuple[int, Tensor]] = dataclasses.field(default_factory=collections.deque)
    inflight: _PendingFrame | None = None  # rendered on the device, not yet handed out


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class _PendingFrame:
    """A frame whose device→host copy was queued; ``image`` is valid once ``ready`` has completed."""

    index: int
    image: Tensor  # (H,W,3) uint8, pinned host memory on CUDA
    ready: torch.cuda.Event | None

    def collect(self) -> VideoFrame:
        if self.ready is not None:
            self.ready.synchronize()
        return VideoFrame(index=self.index, image=self.image.numpy())


class DittoStream:
    """One session's animation (calls from one thread; see :mod:`ditto.backends.base`).

    Audio is taken when :meth:`feed` is called; model work happens as the returned
    iterator is advanced, one HuBERT window or one frame at a time, so the first
    frame leaves as soon as it can. Frames not pulled from one call's iterator come
    out of the next call's.
    """

    def __init__(self, *, models: DittoModels, audio2motion: Audio2MotionCfg, options: SetupOptions,
                 device: torch.device, avatar: DittoAvatar, seed: int, silence_features: Tensor | None) -> None:
        """Args:
            models: the backend's shared models.
            audio2motion: window and condition layout of the LMDM (cfg ``audio2motion_cfg``).
            options: the merged setup options.
            device: the pipeline device.
            avatar: what to animate.
            seed: seeds the DDIM noise (torch generator on ``device``) and the blink gaps.
            silence_features: online mode: HuBERT features of ``overlap_v2`` silent frames.
        """
        self._models = models
        self._options = options
        self._avatar = avatar
        self._device = device
        self._samples = 0
        self._total_frames: int | None = None  # known once finish() is called
        self._finished = False
        self._state: _SessionState | None = self._new_state(audio2motion, seed, silence_features)

    def _new_state(self, a2m: Audio2MotionCfg, seed: int, silence_features: Tensor | None) -> _SessionState:
        opts, device, avatar = self._options, self._device, self._avatar
        generator = torch.Generator(device=device).manual_seed(seed)
        sampler = DDIMSampler((1, a2m.seq_frames, a2m.motion_feat_dim), device=device)
        sampler.set_timesteps(opts.sampling_timesteps, generator=generator)
        window_sampler = CudaGraphSampler(
            denoise_fn_from_runner(self._models.lmdm), sampler, cond_shape=(1, a2m.seq_frames, a2m.audio_feat_dim),
            enabled=isinstance(self._models.lmdm, TorchRunner), graphs=self._models.lmdm_graphs)

        def sample_window(kp_cond: Tensor, cond: Tensor) -> Tensor:
            return window_sampler(kp_cond, cond, generator=generator)

        if opts.ch_info is not None:
            identity = condition_source_from_ch_info(opts.ch_info, device)
            ch_scale: float | None = float(np.asarray(opts.ch_info["x_s_info_lst"][0]["scale"]).reshape(-1)[0])
        else:
            identity = condition_source_from_source(avatar.source)
            ch_scale = None
        condition = ConditionHandler(identity, opts.emo, eye_f0_mode=opts.eye_f0_mode, use_emo=a2m.use_emo,
                                     use_eye_open=a2m.use_eye_open, use_eye_ball=a2m.use_eye_ball, use_sc=a2m.use_sc)
        windowing = MotionWindowing(
            sample_window, motion_to_vector(identity.x_s_info_0), seq_frames=a2m.seq_frames,
            overlap=opts.overlap_v2, online=opts.online_mode, fix_kp_cond=opts.fix_kp_cond,
            fix_kp_cond_dim=opts.fix_kp_cond_dim, smo_k_d=opts.smo_k_d)
        stitch = self._models.stitch
        stitcher = MotionStitcher(
            avatar.source,
            stitch_fn=lambda x_s, x_d: stitch(kp_source=x_s, kp_driving=x_d)["out"],
            use_d_keys=opts.use_d_keys, relative_d=opts.relative_d, drive_eye=opts.drive_eye,
            delta_eye_arr=opts.delta_eye_arr, delta_eye_open_n=opts.delta_eye_open_n, n_frames=opts.N_d,
            rng=random.Random(seed), fade_out_keys=opts.fade_out_keys, fade_type=opts.fade_type,
            flag_stitching=opts.flag_stitching, ch_scale=ch_scale, overall_ctrl_info=opts.overall_ctrl_info)
        v_min_max = as_v_min_max(opts.v_min_max_for_clip, device)
        online = windower = None
        if opts.online_mode:
            if silence_features is None:
                raise ValueError("online mode needs the silence features of overlap_v2 frames")
            online = OnlineAudio2Motion(windowing, condition, silence_features, v_min_max=v_min_max)
            windower = StreamingWindower()
        return _SessionState(stitcher=stitcher, windowing=windowing, condition=condition, v_min_max=v_min_max,
                             online=online, windower=windower)

    # -- public API ---------------------------------------------------------------------------

    def feed(self, audio: np.ndarray) -> Iterator[VideoFrame]:
        """Append float32 16 kHz mono samples; iterate the result for every frame now renderable.

        Offline cfgs render nothing before :meth:`finish` (the whole clip is generated at once).

        Raises:
            MediaError: not a 1-D float array.
            RuntimeError: after :meth:`finish` or :meth:`close`.
        """
        state = self._require_state()
        if self._finished:
            raise RuntimeError("feed() after finish()")
        samples = np.asarray(audio)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise MediaError("the Ditto backend expects 1-D float32 16 kHz mono samples", code=ErrorCode.AUDIO_INVALID)
        samples = samples.astype(np.float32, copy=False)
        self._samples += samples.shape[0]
        if state.windower is not None:
            state.pending_windows.extend(state.windower.push(samples))
        else:
            state.audio.append(samples)
        return self._guarded(self._drain())

    def finish(self) -> Iterator[VideoFrame]:
        """No more audio: yield the remaining frames, ``ceil(samples / 640)`` in all.

        Raises:
            BackendError: CUDA ran out of memory (code ``out_of_memory``); the session is closed.
        """
        state = self._require_state()
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._total_frames = frames_for_samples(self._samples)
        if state.windower is not None:
            state.pending_windows.extend(state.windower.flush())
            return self._guarded(self._finish_online())
        return self._guarded(self._finish_offline())

    def close(self) -> None:
        """Drop the session's state (device memory included). Safe to call twice."""
        self._state = None

    # -- stages -------------------------------------------------------------------------------

    def _require_state(self) -> _SessionState:
        if self._state is None:
            raise RuntimeError("the stream is closed")
        return self._state

    def _guarded(self, frames: Iterator[VideoFrame]) -> Iterator[VideoFrame]:
        """Run ``frames`` under inference mode; a CUDA OOM frees this session and becomes a BackendError."""
        try:
            while True:
                with torch.inference_mode():
                    frame = next(frames, None)
                if frame is None:
                    return
                yield frame
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            self.close()
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            logger.warning("Ditto session out of device memory: %s", exc)
            raise BackendError("the GPU ran out of memory for this session; retry later or with fewer sessions",
                               code=ErrorCode.OUT_OF_MEMORY) from None

    def _drain(self) -> Iterator[VideoFrame]:
        """Render pending rows; when none are left, run the next pending HuBERT window (online).

        Frame k is handed out once frame k+1's device work is queued (when there is a frame
        k+1 already), so the device never waits for the host between frames.
        """
        while True:
            state = self._require_state()
            if state.pending_rows:
                index, row = state.pending_rows.popleft()
                previous, state.inflight = state.inflight, self._render(state, index, row)
                if previous is not None:
                    yield previous.collect()
            elif state.inflight is not None:
                previous, state.inflight = state.inflight, None
                yield previous.collect()
            elif state.pending_windows:
                window = state.pending_windows.popleft()
                features = self._models.hubert.chunk_features(window)
                assert state.online is not None
                self._queue_rows(state, state.online.push(_features_to_device(features, self._device)))
            else:
                return

    def _finish_online(self) -> Iterator[VideoFrame]:
        yield from self._drain()
        state = self._require_state()
        assert state.online is not None
        self._queue_rows(state, state.online.finish())
        yield from self._drain()

    def _finish_offline(self) -> Iterator[VideoFrame]:
        state = self._require_state()
        num_frames = self._total_frames or 0
        if num_frames == 0:
            return
        audio = np.concatenate(state.audio)
        state.audio.clear()
        features = _features_to_device(self._models.hubert.offline_features(audio), self._device)
        state.stitcher.set_num_frames(num_frames)  # upstream setup_Nd: blinks end before the clip does
        for chunk in iter_motion_offline(features, state.condition, state.windowing, v_min_max=state.v_min_max):
            self._queue_rows(state, chunk)
            yield from self._drain()

    def _queue_rows(self, state: _SessionState, chunk: MotionChunk) -> None:
        """Queue an online MotionChunk's rows, dropping the tail beyond the audio (known after finish)."""
        if state.online is not None and state.online.d0 is not None and state.stitcher.d0 is None:
            state.stitcher.set_d0(state.online.d0)  # relative-driving reference: the silence frame
        for offset in range(len(chunk)):
            index = chunk.start_frame + offset
            if self._total_frames is not None and index >= self._total_frames:
                break
            state.pending_rows.append((index, chunk.motion[offset]))

    def _render(self, state: _SessionState, index: int, row: Tensor) -> _PendingFrame:
        """Motion row (265,) → pasted frame; only the final uint8 image leaves the device
        (queued into pinned memory; :meth:`_PendingFrame.collect` waits for it)."""
        source_frame = self._avatar.source.frame_for_output(index)
        keypoints = state.stitcher(source_frame, vector_to_motion(row), ctrl_for_frame(self._options.ctrl_info, index))
        f_s = self._avatar.source.frames[source_frame].f_s
        render = self._models.renderer(f_s, keypoints.x_s, keypoints.x_d)
        image = paste_back(self._avatar.paste_plans[source_frame], render)
        if image.device.type != "cuda":
            return _PendingFrame(index=index, image=image.cpu(), ready=None)
        host = torch.empty(image.shape, dtype=image.dtype, pin_memory=True)
        host.copy_(image, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(image.device))
        return _PendingFrame(index=index, image=host, ready=ready)


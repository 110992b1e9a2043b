"""The Ditto backend: the official checkpoints (PyTorch, ONNX or TensorRT) behind
:class:`~ditto.backends.base.AnimatorBackend`.

:class:`DittoBackend` is the facade the server holds. It loads the models once per server
(:class:`~ditto.backends.talkinghead.loading.DittoModels`: every model file of the cfg pkl,
checked up front, so a missing, truncated or mismatched file ends startup with a
:class:`ConfigError` that names it), captures the device engine's CUDA graphs and measures
the live capacity at :meth:`~DittoBackend.warmup`, registers each avatar once
(:meth:`~DittoBackend.register_source` runs :mod:`~ditto.backends.talkinghead.pipeline.registration`
and returns a :class:`~ditto.backends.talkinghead.avatar.DittoAvatar`) and opens the sessions
(:meth:`~DittoBackend.open_stream`, a :class:`~ditto.backends.talkinghead.stream.DittoStream`
each), which share the models::

    audio ─ HuBERT windows ─ ConditionHandler ─ LMDM windows (DDIM) ─ motion rows (265)
          ─ MotionStitcher (+ stitching net) ─ warp ─ decode ─ paste back ─ VideoFrame

Sessions keep their state on the host and never touch the device: every model call goes
to the models' one :class:`~ditto.backends.talkinghead.engine.DeviceEngine`, which batches the
HuBERT windows, LMDM windows and frames of all sessions (on CUDA: on the engine's one CUDA
stream, warp + decode and the whole DDIM loop replayed as CUDA graphs captured per batch size
at :meth:`DittoBackend.warmup`, the PyTorch renderer under fp16 autocast as upstream's PyTorch
path, the JPEG encoded on the GPU when the server asks for it).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ditto import FPS, SAMPLES_PER_FRAME
from ditto.backends.base import Avatar, StageStats, StreamOptions
from ditto.backends.talkinghead.aux_models.hubert import split_len
from ditto.backends.talkinghead.avatar import DittoAvatar, host_copy
from ditto.backends.talkinghead.config import DittoCfg
from ditto.backends.talkinghead.engine import (
    DEFAULT_BATCH_SIZES,
    RenderWork,
    Stage,
    WindowWork,
    batch_sizes_up_to,
)
from ditto.backends.talkinghead.loading import DittoModels, resolve_device
from ditto.backends.talkinghead.options import SetupOptions
from ditto.backends.talkinghead.pipeline.condition import cond_width
from ditto.backends.talkinghead.pipeline.putback import CROP_SIZE, build_paste_plan
from ditto.backends.talkinghead.pipeline.registration import CropOptions, fit_to_max_size
from ditto.backends.talkinghead.preflight import load_checked_cfg, trt_plugin_paths
from ditto.backends.talkinghead.stream import DittoStream
from ditto.errors import ConfigError
from ditto.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["DittoBackend"]

TARGET_UTILIZATION = 0.9
"""Device time per second the measured live capacity may fill (headroom for bursts and file sessions).
Calibrated on the H200 (bench/bench_server_load.py): 8 live sessions sustained where this model puts
the load at 0.89, 10 not sustained."""


class DittoBackend:
    """Ditto behind the animator interface.

    Args:
        cfg: the parsed cfg pkl (:func:`~ditto.backends.talkinghead.config.load_cfg`).
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
    live_capacity: int | None = None  # measured by warmup() on CUDA

    def __init__(
        self,
        cfg: DittoCfg,
        device: torch.device | str = "cpu",
        *,
        models: DittoModels | None = None,
        max_size: int | None = None,
        setup_options: Mapping[str, Any] | None = None,
        trt_plugins: Sequence[Path] = (),
        batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
        compile_min_batch: int | None = None,
        motion_stream: bool = False,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self._setup_overrides = dict(setup_options or {})
        self.options: SetupOptions = cfg.setup_options(**self._setup_overrides)
        self._server_max_size = max_size
        self.max_size = self.options.max_size if max_size is None else min(max_size, self.options.max_size)
        self._check_options()
        self._owns_models = models is None
        self.models = (
            models
            if models is not None
            else DittoModels.load(
                cfg,
                self.device,
                trt_plugins=trt_plugins,
                batch_sizes=batch_sizes,
                compile_min_batch=compile_min_batch,
                motion_stream=motion_stream,
            )
        )
        self._registration_lock = threading.Lock()
        # Online mode starts every session with the features of overlap_v2 frames of silence.
        self._silence_features: Tensor | None = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
        if self.options.online_mode:
            silence = np.zeros(self.options.overlap_v2 * SAMPLES_PER_FRAME, np.float32)
            self._silence_features = torch.from_numpy(self.models.hubert.offline_features(silence))

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
        backend = cls(
            cfg,
            device,
            max_size=settings.max_size,
            trt_plugins=trt_plugin_paths(cfg, settings),
            batch_sizes=batch_sizes_up_to(settings.max_batch),
            compile_min_batch=settings.compile_min_batch or None,
            motion_stream=settings.motion_stream,
        )
        backend.warmup()
        return backend

    def warmup(self) -> None:
        """On CUDA: capture the engine's warp+decode and LMDM graphs (every batch size, this
        backend's ``sampling_timesteps``) now, so that no session pays for it (cuDNN autotuning
        included), measure the engine's batch costs, and from them the live capacity. Nothing to
        do on the CPU."""
        if self.device.type != "cuda":
            return
        a2m = self.cfg.audio2motion
        with torch.inference_mode():
            self.models.renderer.capture()
            self.models.engine.sampler.capture(
                self.options.sampling_timesteps, (a2m.seq_frames, a2m.motion_feat_dim), a2m.audio_feat_dim
            )
            self.models.engine.capture(hubert_window=split_len(self.models.engine.chunksize))
        torch.cuda.synchronize(self.device)
        engine, works = self.models.engine, self._synthetic_works()
        engine.measure_batch_costs(works)  # the engine plans its batches by these costs
        if self.options.online_mode:
            self.live_capacity = self._live_capacity(self._motion_share(works) if engine.motion_stream else 1.0)

    def _synthetic_works(self) -> Callable[[Stage, int], list[Any]]:
        """``works(stage, n)``: n items of engine work like a session's (a frame of the server's
        ``max_size``, JPEG on the GPU), to time the stages with."""
        engine, a2m, opts = self.models.engine, self.cfg.audio2motion, self.options
        gen = torch.Generator(device="cpu").manual_seed(0)
        side = self.max_size
        frame = torch.zeros((side, side, 3), dtype=torch.uint8, device=self.device)
        scale = side / (2 * CROP_SIZE)  # the face crop covers the middle half of the frame
        plan = build_paste_plan(frame, np.array([[scale, 0, side / 4], [0, scale, side / 4], [0, 0, 1]]))
        f_s = torch.randn((1, 32, 16, 64, 64), generator=gen).to(self.device)
        steps = opts.sampling_timesteps

        def works(stage: Stage, n: int) -> list[Any]:
            if stage is Stage.HUBERT:
                return [np.zeros(split_len(engine.chunksize), np.float32)] * n
            if stage is Stage.LMDM:
                return [
                    WindowWork(
                        steps=steps,
                        kp_cond=torch.zeros(1, a2m.motion_feat_dim),
                        cond=torch.zeros(1, a2m.seq_frames, a2m.audio_feat_dim),
                        x_T=torch.randn((1, a2m.seq_frames, a2m.motion_feat_dim), generator=gen),
                        noise=torch.randn((steps - 1, 1, a2m.seq_frames, a2m.motion_feat_dim), generator=gen),
                    )
                ] * n
            return [
                RenderWork(
                    index=0,
                    f_s=f_s,
                    x_s=torch.randn((1, 21, 3), generator=gen) * 0.2,
                    x_d=torch.randn((1, 21, 3), generator=gen) * 0.2,
                    stitch=opts.flag_stitching,
                    plan=plan,
                    jpeg_quality=85,
                )
            ] * n

        return works

    def _motion_share(self, works: Callable[[Stage, int], list[Any]]) -> float:
        """With a motion stream: the share of HuBERT and LMDM device time that still adds to the
        render's when they run beside it (1: nothing hidden), from a render batch of 16 timed alone
        and with an LMDM batch of 2 and a HuBERT batch of 4 beside it (the motion work of about 16
        live frames: a session asks for 2.5 LMDM and 5 HuBERT windows per 25 frames online)."""
        engine = self.models.engine
        render = {Stage.RENDER: works(Stage.RENDER, 16)}
        motion = {Stage.LMDM: works(Stage.LMDM, 2), Stage.HUBERT: works(Stage.HUBERT, 4)}
        alone, motion_alone = engine.time_together(render), engine.time_together(motion)
        together = engine.time_together({**motion, **render})
        return min(1.0, max(0.0, (together - alone) / motion_alone))

    def _live_capacity(self, motion_share: float) -> int:
        """How many live sessions the engine keeps real time, from its measured batch costs.

        A live session asks per second for 25 frames, 25/V LMDM windows (V = 80 − overlap_v2) and
        5 HuBERT windows. Its frames become ready V at a time (one LMDM window); the sessions'
        windows arrive spread out, so a third of the N sessions is counted as overlapping: V·⌈N/3⌉
        frames wait for the render, ⌈N/3⌉ windows for LMDM and HuBERT, each batched as the engine
        plans it (:meth:`DeviceEngine.cost_per_item`); HuBERT and LMDM count with ``motion_share`` of
        their time (with a motion stream, what the render does not hide: :meth:`_motion_share`). The
        capacity is the largest N whose device time per second stays under ``TARGET_UTILIZATION``.
        """
        engine, a2m, opts = self.models.engine, self.cfg.audio2motion, self.options
        valid = a2m.seq_frames - opts.overlap_v2
        # (stage, items per second per session, items that wait together per overlapping session, share)
        demand = (
            (Stage.RENDER, FPS, valid, 1.0),
            (Stage.LMDM, FPS / valid, 1, motion_share),
            (Stage.HUBERT, FPS / 5, 1, motion_share),
        )
        capacity = 0
        for n in range(1, 257):
            overlapping = math.ceil(n / 3)
            load = sum(
                share * rate * n * engine.cost_per_item(stage, per * overlapping) for stage, rate, per, share in demand
            )
            if load > TARGET_UTILIZATION:
                break
            capacity = n
        costs = engine.batch_costs
        logger.info(
            "Live capacity %d sessions (per item at batch 1/%d: render %.1f/%.1f ms, LMDM %.1f/%.1f ms, "
            "HuBERT %.1f/%.1f ms; motion time counted %.0f %%)",
            capacity,
            engine.max_batch,
            *(1000 * costs[stage][b] / b for stage in Stage for b in (1, engine.max_batch)),
            100 * motion_share,
        )
        return max(1, capacity)

    def with_options(self, **setup_options: Any) -> DittoBackend:
        """A backend sharing these models, with more setup options overridden (e.g. ``emo=3``).

        Avatars registered by either backend work in both unless a ``crop_*`` or
        ``max_size`` option differs.
        """
        return DittoBackend(
            self.cfg,
            self.device,
            models=self.models,
            max_size=self._server_max_size,
            setup_options={**self._setup_overrides, **setup_options},
        )

    def _check_options(self) -> None:
        opts, a2m = self.options, self.cfg.audio2motion
        if not 0 <= opts.overlap_v2 < a2m.seq_frames:
            raise ConfigError(f"{self.cfg.path}: overlap_v2={opts.overlap_v2} must be in [0, {a2m.seq_frames})")
        layout = cond_width(
            use_emo=a2m.use_emo, use_eye_open=a2m.use_eye_open, use_eye_ball=a2m.use_eye_ball, use_sc=a2m.use_sc
        )
        if layout != a2m.audio_feat_dim:
            raise ConfigError(
                f"{self.cfg.path}: the use_* flags give a {layout}-wide condition, "
                f"but audio_feat_dim is {a2m.audio_feat_dim}"
            )

    def register_source(self, image_rgb: np.ndarray) -> DittoAvatar:
        """Analyse a portrait (RGB uint8) once: crop, motion, appearance, eye condition, paste plan.

        Raises:
            SourceError: no face found (code ``no_face``).
        """
        image = fit_to_max_size(np.ascontiguousarray(image_rgb), self.max_size)
        with self._registration_lock, torch.inference_mode():
            registered = self.models.registrar.register_image(image, CropOptions.from_setup(self.options))
        height, width = image.shape[:2]
        return DittoAvatar(
            width=width,
            height=height,
            source=registered.source,
            paste_plans=registered.paste_plans,
            host_source=host_copy(registered.source),
        )

    def open_stream(self, avatar: Avatar, *, seed: int, options: StreamOptions = StreamOptions()) -> DittoStream:
        """Start a session; ``seed`` fixes its diffusion noise and blink timing."""
        if not isinstance(avatar, DittoAvatar):
            raise TypeError("avatar was not registered by the Ditto backend")
        return DittoStream(
            engine=self.models.engine,
            audio2motion=self.cfg.audio2motion,
            options=self.options,
            avatar=avatar,
            seed=seed,
            silence_features=self._silence_features,
            stream_options=options,
        )

    def stage_stats(self) -> dict[str, StageStats]:
        return self.models.engine.stage_stats()

    def close(self) -> None:
        if self._owns_models:
            self.models.close()

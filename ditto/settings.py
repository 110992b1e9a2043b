"""Server settings: one frozen object built from the command line (or ``DITTO_*`` variables)
and passed in; no module reads it at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DITTO_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    server_id: str | None = None  # named in streaming_started; None: host:port (a Serve replica: its replica id)

    backend: Literal["auto", "lite", "ditto"] = "auto"
    data_root: Path | None = None  # Ditto checkpoint folder (ditto_pytorch/, ditto_onnx/, ditto_trt_*/)
    cfg_pkl: Path | None = None  # Ditto cfg pkl (ditto_cfg/*.pkl)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    trt_plugin: Path | None = None  # GridSample3D TensorRT plugin (default: libgrid_sample_3d_plugin.so by the engines)
    fallback: bool = False  # TensorRT unusable -> serve the ditto_pytorch / ditto_onnx tree beside data_root

    media_root: Path | None = None  # server-side files clients may name; None: uploads only
    max_sessions: int = Field(4, ge=1, le=256)
    # live sessions kept real time; more get busy. None: the backend's measured capacity (Ditto on
    # CUDA), else max_sessions
    max_live_sessions: int | None = Field(None, ge=1, le=256)
    max_batch: int = Field(16, ge=1, le=64)  # Ditto: frames / windows the device engine runs at once
    compile_min_batch: int = Field(8, ge=0, le=64)  # Ditto on CUDA: render batches this large run compiled; 0: never
    motion_stream: bool = True  # Ditto: HuBERT and LMDM in a lane of their own (on CUDA a stream), beside the render
    lite_render_slots: int | None = Field(None, ge=1, le=64)  # lite: frames rendered at once; None: RENDER_SLOTS
    jpeg_quality: int = Field(85, ge=1, le=100)
    max_size: int = Field(1920, ge=64, le=8192)  # longest side of the output video

    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # one WebSocket message
    max_audio_seconds: float = Field(600.0, gt=0)
    max_image_pixels: int = Field(50_000_000, ge=1)  # refused before decoding (decompression bombs)
    # encoded frames waiting for the socket; room for a whole engine batch (16 frames of a session come at once
    # from the GPU), so that a live frame is skipped for a slow client, never for the burst it came in
    frame_queue_size: int = Field(32, ge=1, le=1024)
    idle_timeout_s: float = Field(30.0, gt=0)  # a session that sends nothing this long (before start, or live) ends
    live_idle_after_s: float = Field(0.2, gt=0)  # live: audio this overdue -> the face idles (silence, IDLE frames)
    live_inbox_chunks: int = Field(64, ge=1, le=4096)  # live: audio chunks received but not yet rendered
    live_max_lag_ms: float = Field(500.0, gt=0)  # live: a frame this late to render (since it could be shown) is shed
    shutdown_grace_s: float = Field(5.0, ge=0)
    request_timeout_s: float = Field(10.0, gt=0)  # a connection that sent no complete HTTP request this long is dropped

    @model_validator(mode="after")
    def _ditto_paths_come_together(self) -> "Settings":
        if (self.data_root is None) != (self.cfg_pkl is None):
            raise ValueError("--data_root and --cfg_pkl go together: give both to serve Ditto, or neither")
        if self.backend == "ditto" and self.cfg_pkl is None:
            raise ValueError("--backend ditto needs --data_root and --cfg_pkl")
        return self

    @property
    def server_name(self) -> str:
        """What ``streaming_started`` names as ``server_id``."""
        return self.server_id or f"{self.host}:{self.port}"

    @property
    def backend_name(self) -> str:
        """The backend that will serve: ``auto`` means Ditto when checkpoints are given, else lite."""
        if self.backend != "auto":
            return self.backend
        return "ditto" if self.cfg_pkl is not None else "lite"

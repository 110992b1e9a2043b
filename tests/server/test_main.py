"""``streaming_server.py`` flags and ``DITTO_*`` variables: flag > environment > default."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ditto.server.main import build_parser, settings_from_args

# (flag, env var, env value, flag value, settings field, default): every setting that has a flag
CASES = [
    ("--host", "DITTO_HOST", "0.0.0.0", "::1", "host", "127.0.0.1"),
    ("--port", "DITTO_PORT", "9001", "9002", "port", 8000),
    ("--log-level", "DITTO_LOG_LEVEL", "debug", "warning", "log_level", "info"),
    ("--backend", "DITTO_BACKEND", "lite", "auto", "backend", "auto"),
    ("--device", "DITTO_DEVICE", "cpu", "cuda", "device", "auto"),
    ("--max_sessions", "DITTO_MAX_SESSIONS", "7", "9", "max_sessions", 4),
    ("--max_live_sessions", "DITTO_MAX_LIVE_SESSIONS", "2", "3", "max_live_sessions", None),
    ("--live_max_lag_ms", "DITTO_LIVE_MAX_LAG_MS", "250", "750", "live_max_lag_ms", 500.0),
    ("--max_batch", "DITTO_MAX_BATCH", "4", "8", "max_batch", 16),
    ("--compile_min_batch", "DITTO_COMPILE_MIN_BATCH", "0", "4", "compile_min_batch", 8),
    ("--lite_render_slots", "DITTO_LITE_RENDER_SLOTS", "3", "1", "lite_render_slots", None),
    ("--jpeg_quality", "DITTO_JPEG_QUALITY", "70", "90", "jpeg_quality", 85),
    ("--max_size", "DITTO_MAX_SIZE", "512", "256", "max_size", 1920),
]


def settings_for(argv: list[str]):
    return settings_from_args(build_parser().parse_args(argv))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for _, var, *_ in CASES:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("flag,var,env_value,flag_value,field,default", CASES, ids=[c[0] for c in CASES])
def test_flag_over_environment_over_default(monkeypatch, flag, var, env_value, flag_value, field, default):
    assert getattr(settings_for([]), field) == default
    monkeypatch.setenv(var, env_value)
    from_env = getattr(settings_for([]), field)
    assert from_env != default and from_env == type(from_env)(env_value)
    from_flag = getattr(settings_for([flag, flag_value]), field)
    assert from_flag != from_env and from_flag == type(from_flag)(flag_value)


def test_fallback_from_environment(monkeypatch):
    assert settings_for([]).fallback is False
    monkeypatch.setenv("DITTO_FALLBACK", "true")
    assert settings_for([]).fallback is True


def test_motion_stream_from_flag_and_environment(monkeypatch):
    assert settings_for([]).motion_stream is True
    assert settings_for(["--no-motion_stream"]).motion_stream is False
    monkeypatch.setenv("DITTO_MOTION_STREAM", "false")
    assert settings_for([]).motion_stream is False
    assert settings_for(["--motion_stream"]).motion_stream is True


def test_bad_environment_value_is_refused(monkeypatch):
    monkeypatch.setenv("DITTO_JPEG_QUALITY", "0")
    with pytest.raises(ValidationError, match="jpeg_quality"):
        settings_for([])

"""Backend name -> factory, with lazy imports so the lite backend runs without torch."""

from __future__ import annotations

from typing import Callable

from ditto.backends.base import AnimatorBackend
from ditto.settings import Settings


def _lite(settings: Settings) -> AnimatorBackend:
    from ditto.backends.lite import LiteBackend

    if settings.lite_render_slots is None:
        return LiteBackend()
    return LiteBackend(render_slots=settings.lite_render_slots)


def _ditto(settings: Settings) -> AnimatorBackend:
    from ditto.backends.talkinghead.backend import DittoBackend

    return DittoBackend.from_settings(settings)


BACKENDS: dict[str, Callable[[Settings], AnimatorBackend]] = {"lite": _lite, "ditto": _ditto}


def create_backend(settings: Settings) -> AnimatorBackend:
    """Build the backend the settings name. Raises ConfigError for a bad checkpoint setup."""
    return BACKENDS[settings.backend_name](settings)

"""A registered avatar: what :meth:`~ditto.backends.talkinghead.backend.DittoBackend.register_source`
returns and every :class:`~ditto.backends.talkinghead.stream.DittoStream` of that portrait reads."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ditto.backends.talkinghead.pipeline.putback import PastePlan
from ditto.backends.talkinghead.pipeline.stages import MotionInfo, SourceInfo

__all__ = ["DittoAvatar", "host_copy"]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class DittoAvatar:
    """A registered portrait; read-only, shared by every session that animates it."""

    width: int
    height: int
    source: SourceInfo  # motion, appearance volume, eye condition (on the device)
    paste_plans: tuple[PastePlan, ...]  # paste-back of each source frame, precomputed
    host_source: SourceInfo  # ``source`` with motion and eye condition on the host (sessions' own math)


def _motion_to(info: MotionInfo, device: torch.device) -> MotionInfo:
    fields: dict[str, Any] = {
        f.name: None if getattr(info, f.name) is None else getattr(info, f.name).to(device)
        for f in dataclasses.fields(info)
    }
    return MotionInfo(**fields)


def host_copy(source: SourceInfo) -> SourceInfo:
    """Motion and eye condition on the host; the appearance volumes and images stay where they are."""
    host = torch.device("cpu")
    frames = tuple(
        dataclasses.replace(
            frame,
            x_s_info=_motion_to(frame.x_s_info, host),
            eye_open=frame.eye_open.to(host),
            eye_ball=frame.eye_ball.to(host),
        )
        for frame in source.frames
    )
    return dataclasses.replace(source, frames=frames, sc=source.sc.to(host))

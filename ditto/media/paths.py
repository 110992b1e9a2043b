"""The one place where a user-supplied name meets the file system."""

from __future__ import annotations

from pathlib import Path

from ditto.errors import ErrorCode, MediaError


def resolve_media_path(root: Path | None, user_path: str) -> Path:
    """Map a client-named path to a regular file inside ``root``.

    Refuses absolute paths, ``..`` components and symlinks that leave ``root``
    (the fully resolved target must stay inside the resolved root).

    Raises:
        MediaError: ``path_forbidden`` or ``file_not_found``.
    """
    if root is None:
        raise MediaError(
            "server-side paths are disabled on this server (start it with --media_root DIR); upload the file instead",
            code=ErrorCode.PATH_FORBIDDEN,
        )
    candidate = Path(user_path)
    if candidate.is_absolute() or user_path.startswith(("/", "\\")) or ".." in candidate.parts or "\x00" in user_path:
        raise MediaError(
            f"path {user_path!r} must be relative to the media root, without '..'", code=ErrorCode.PATH_FORBIDDEN
        )
    root_resolved = root.resolve()
    target = (root_resolved / candidate).resolve()
    if not target.is_relative_to(root_resolved):
        raise MediaError(f"path {user_path!r} leaves the media root", code=ErrorCode.PATH_FORBIDDEN)
    if not target.is_file():
        raise MediaError(f"file {user_path!r} not found in the media root", code=ErrorCode.FILE_NOT_FOUND)
    return target

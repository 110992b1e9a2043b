"""Source image decoding and checks: format, pixel cap (decompression bombs), EXIF
orientation, longest side capped at ``max_size``, both sides even."""

from __future__ import annotations

import io
import warnings

import numpy as np

from ditto.errors import ErrorCode, MediaError


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Output size for a source: longest side at most ``max_size``, both sides even (at least 2)."""
    scale = min(1.0, max_size / max(width, height))
    w = max(2, int(width * scale) // 2 * 2)
    h = max(2, int(height * scale) // 2 * 2)
    return w, h


def decode_image(data: bytes, *, max_pixels: int, max_size: int, name: str = "image") -> np.ndarray:
    """Decode an image file held in memory to RGB uint8 (H, W, 3), resized per :func:`fit_size`.

    The header is read first and the pixel count checked before any pixel is decoded.

    Raises:
        MediaError: ``image_invalid`` (not an image, truncated), ``image_too_large``.
    """
    import cv2
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise MediaError(f"{name} is empty (0 bytes)", code=ErrorCode.IMAGE_INVALID)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise MediaError(
                    f"{name} is {width}x{height} = {width * height / 1e6:.0f} Mpixel, over the limit of "
                    f"{max_pixels / 1e6:.0f} Mpixel",
                    code=ErrorCode.IMAGE_TOO_LARGE,
                )
            Image.MAX_IMAGE_PIXELS = None  # our own limit was checked above
            img = ImageOps.exif_transpose(img)
            rgb = np.asarray(img.convert("RGB"))
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{name} is not a readable image ({exc})", code=ErrorCode.IMAGE_INVALID) from None
    h, w = rgb.shape[:2]
    out_w, out_h = fit_size(w, h, max_size)
    if (out_w, out_h) != (w, h):
        interp = cv2.INTER_AREA if out_w < w else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (out_w, out_h), interpolation=interp)
    return np.ascontiguousarray(rgb)

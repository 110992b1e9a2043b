import io

import numpy as np
import pytest
from PIL import Image

from ditto.errors import ErrorCode, MediaError
from ditto.media.image import decode_image, fit_size
from ditto.media.paths import resolve_media_path


def png(array: np.ndarray, exif_orientation: int | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", exif=exif.tobytes())
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def test_fit_size_caps_and_evens():
    assert fit_size(1432, 1432, 1920) == (1432, 1432)
    assert fit_size(1001, 777, 1920) == (1000, 776)
    assert fit_size(4000, 2000, 1920) == (1920, 960)


def test_decode_caps_longest_side_and_keeps_rgb():
    arr = np.zeros((300, 501, 3), np.uint8)
    arr[..., 0] = 255
    out = decode_image(png(arr), max_pixels=10**7, max_size=250)
    assert out.shape == (148, 250, 3) and out.dtype == np.uint8
    assert out[..., 0].mean() > 250 and out[..., 2].mean() < 5  # red stays red: RGB order


def test_exif_orientation_is_applied():
    arr = np.zeros((40, 80, 3), np.uint8)
    out = decode_image(png(arr, exif_orientation=6), max_pixels=10**7, max_size=1920)
    assert out.shape[:2] == (80, 40)


def test_pixel_cap_is_checked_before_decoding():
    with pytest.raises(MediaError) as info:
        decode_image(png(np.zeros((100, 100, 3), np.uint8)), max_pixels=5000, max_size=1920)
    assert info.value.code == ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize("data", [b"", b"GIF89a-truncated", b"plain text"])
def test_not_an_image(data):
    with pytest.raises(MediaError) as info:
        decode_image(data, max_pixels=10**7, max_size=1920)
    assert info.value.code == ErrorCode.IMAGE_INVALID


def test_media_paths(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.wav").write_bytes(b"x")
    (tmp_path / "outside.wav").write_bytes(b"x")
    (root / "escape.wav").symlink_to(tmp_path / "outside.wav")
    (root / "inside_link.wav").symlink_to(root / "sub" / "a.wav")
    assert resolve_media_path(root, "sub/a.wav") == (root / "sub" / "a.wav").resolve()
    assert resolve_media_path(root, "inside_link.wav") == (root / "sub" / "a.wav").resolve()
    for bad, code in (
        ("../outside.wav", ErrorCode.PATH_FORBIDDEN),
        ("/etc/passwd", ErrorCode.PATH_FORBIDDEN),
        ("escape.wav", ErrorCode.PATH_FORBIDDEN),
        ("sub", ErrorCode.FILE_NOT_FOUND),
        ("nope.wav", ErrorCode.FILE_NOT_FOUND),
    ):
        with pytest.raises(MediaError) as info:
            resolve_media_path(root, bad)
        assert info.value.code == code, bad
    with pytest.raises(MediaError) as info:
        resolve_media_path(None, "sub/a.wav")
    assert info.value.code == ErrorCode.PATH_FORBIDDEN

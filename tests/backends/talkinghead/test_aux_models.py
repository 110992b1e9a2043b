"""Auxiliary models: SCRFD/landmark/mesh/HuBERT pre/post-processing and the stand-in files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ditto.backends.talkinghead.aux_models import face_detector as fd
from ditto.backends.talkinghead.aux_models import face_mesh as fm
from ditto.backends.talkinghead.aux_models import hubert as hb
from ditto.backends.talkinghead.aux_models import landmarks as lm
from ditto.errors import ErrorCode, SourceError
from ditto.tools.aux_test_models import write_aux_test_models
from tests.conftest import EXAMPLE_IMAGE, astronaut


class OrtRunner:
    """Test-only adapter: onnxruntime session behind the runner contract."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.device = torch.device("cpu")

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        feeds = {k: v.numpy() for k, v in inputs.items()}
        outs = self.session.run(None, feeds)
        return {name: torch.from_numpy(o) for name, o in zip(self.output_names, outs)}


class FakeRunner:
    """Returns fixed numpy outputs (in the given order) and records the inputs."""

    def __init__(self, outputs: dict[str, np.ndarray], input_names=("image",)) -> None:
        self.outputs = outputs
        self.input_names = tuple(input_names)
        self.output_names = tuple(outputs)
        self.calls: list[dict[str, np.ndarray]] = []

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append({k: v.numpy().copy() for k, v in inputs.items()})
        return {k: torch.from_numpy(np.asarray(v)) for k, v in self.outputs.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("aux")
    write_aux_test_models(root / "ditto_onnx", root / "aux_models", seed=7, hubert="small")
    return {"onnx": root / "ditto_onnx", "ori": root / "aux_models"}


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return astronaut(512)  # RGB portrait, public domain


# --------------------------------------------------------------------------- SCRFD math


def test_letterbox_wide_and_tall():
    wide = np.full((300, 600, 3), 200, np.uint8)
    canvas, scale = fd.letterbox(wide, 512)
    assert canvas.shape == (512, 512, 3)
    assert scale == pytest.approx(256 / 300)
    assert (canvas[:256, :512] == 200).all() and (canvas[256:] == 0).all()

    tall = np.full((800, 400, 3), 50, np.uint8)
    canvas, scale = fd.letterbox(tall, 512)
    assert scale == pytest.approx(512 / 800)
    assert (canvas[:, :256] == 50).all() and (canvas[:, 256:] == 0).all()


def test_blob_swaps_red_and_blue_and_normalises():
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 255  # pure red
    blob = fd.make_blob(img)
    assert blob.shape == (1, 3, 4, 4) and blob.dtype == np.float32
    assert np.allclose(blob[0, 2], (255 - 127.5) / 128)  # red lands in channel 2 (BGR)
    assert np.allclose(blob[0, 0], -127.5 / 128)


def test_anchor_centers_layout():
    c = fd.anchor_centers(64, 64, 8)
    assert c.shape == (8192, 2)
    assert (c[0] == c[1]).all() and tuple(c[0]) == (0, 0)
    assert tuple(c[2]) == (8, 0)  # next column
    assert tuple(c[128]) == (0, 8)  # next row (64 cells × 2 anchors)


def _empty_scrfd_outputs() -> list[np.ndarray]:
    sizes = [64 * 64 * 2, 32 * 32 * 2, 16 * 16 * 2]
    return (
        [np.zeros((n, 1), np.float32) for n in sizes]
        + [np.zeros((n, 4), np.float32) for n in sizes]
        + [np.zeros((n, 10), np.float32) for n in sizes]
    )


def test_decode_scrfd_distance_math_and_threshold():
    outs = _empty_scrfd_outputs()
    row, col, anchor = 5, 7, 1
    idx = (row * 32 + col) * 2 + anchor  # stride 16 level
    outs[1][idx] = 0.5  # exactly at threshold: kept
    outs[1][idx - 1] = 0.499  # just below: dropped
    outs[4][idx] = (1, 2, 3, 4)
    outs[7][idx] = np.arange(10) * 0.5
    scores, boxes, kps = fd.decode_scrfd(outs, (512, 512), 0.5)
    assert scores.tolist() == [0.5]
    cx, cy = col * 16, row * 16
    assert boxes[0].tolist() == [cx - 16, cy - 32, cx + 48, cy + 64]
    expected = np.stack([cx + np.arange(0, 10, 2) * 8, cy + np.arange(1, 10, 2) * 8], 1)
    assert np.allclose(kps[0], expected)


def test_nms_uses_plus_one_areas_and_keeps_score_order():
    boxes = np.array([[0, 0, 4, 4], [2, 0, 6, 4], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.95], np.float32)
    # IoU(0,1) = 15/35 ≈ 0.43 with "+1" areas (0.33 without) → box 1 suppressed
    assert fd.nms(boxes, scores, 0.4).tolist() == [2, 0]
    assert fd.nms(boxes, scores, 0.45).tolist() == [2, 0, 1]


def test_detector_reads_ori_order_from_declared_names_and_rescales():
    outs = _empty_scrfd_outputs()
    idx = (10 * 32 + 10) * 2
    outs[1][idx] = 0.9
    outs[4][idx] = (2, 2, 2, 2)
    names = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
    runner = FakeRunner(dict(zip(names, outs)), input_names=("input.1",))
    img = np.full((1024, 1024, 3), 100, np.uint8)  # det_scale 0.5
    dets = fd.FaceDetector(runner)(img)
    assert set(runner.calls[0]) == {"input.1"}
    assert len(dets) == 1
    assert np.allclose(dets.boxes[0], np.array([160 - 32, 160 - 32, 160 + 32, 160 + 32]) * 2)


def test_detector_uses_ditto_names_whatever_the_dict_order():
    outs = _empty_scrfd_outputs()
    idx = (3 * 64 + 4) * 2
    outs[0][idx] = 0.8  # stride 8
    outs[3][idx] = (1, 1, 1, 1)
    ditto = dict(zip(fd.DITTO_OUTPUT_NAMES, outs))
    shuffled = {k: ditto[k] for k in reversed(fd.DITTO_OUTPUT_NAMES)}
    dets = fd.FaceDetector(FakeRunner(shuffled))(np.zeros((512, 512, 3), np.uint8))
    assert np.allclose(dets.boxes[0], [32 - 8, 24 - 8, 32 + 8, 24 + 8])


def test_largest_face_prefers_area_and_raises_without_face():
    dets = fd.FaceDetections(
        boxes=np.array([[0, 0, 10, 10], [0, 0, 50, 40]], np.float32),
        scores=np.array([0.99, 0.6], np.float32),
        kps=np.zeros((2, 5, 2), np.float32),
    )
    box, _ = fd.largest_face(dets)
    assert box.tolist() == [0, 0, 50, 40]
    with pytest.raises(SourceError) as err:
        fd.largest_face(fd.FaceDetections.empty())
    assert err.value.code == ErrorCode.NO_FACE


# --------------------------------------------------------------------------- crop geometry


def _rotated_face(n: int, angle_deg: float, center=(300.0, 200.0), size=120.0) -> np.ndarray:
    from ditto.tools.aux_test_models import face_template

    anchors = {203: ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)), 106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61))}
    pts = face_template(n, *anchors[n]) * size
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (pts @ rot.T + center).astype(np.float32)


@pytest.mark.parametrize("n,angle", [(203, 0.0), (203, 23.0), (106, -40.0)])
def test_crop_round_trip_and_alignment(n, angle):
    pts = _rotated_face(n, angle)
    img = np.zeros((480, 640, 3), np.uint8)
    crop = lm.crop_by_landmarks(img, pts, dsize=512, scale=2.3, vy_ratio=-0.125)
    assert np.allclose(crop.M_o2c @ crop.M_c2o, np.eye(3), atol=1e-5)
    assert crop.image.shape == (512, 512, 3)
    # rotation made the eye→lip axis vertical in the crop
    eye, lip = lm.transform_points(lm.anchor_points(pts), crop.M_o2c)
    assert abs(eye[0] - lip[0]) < 1e-2 and lip[1] > eye[1]
    # crop side = 2.3 × landmark extent (template extent = 120 px)
    assert np.linalg.norm(crop.M_c2o[:2, 0]) * 512 == pytest.approx(2.3 * 120, rel=1e-3)


def test_vy_ratio_shifts_the_centre_along_the_face_axis():
    pts = _rotated_face(203, 0.0)
    base = lm.crop_rect_from_landmarks(pts, scale=2.0, vy_ratio=0.0)
    up = lm.crop_rect_from_landmarks(pts, scale=2.0, vy_ratio=-0.125)
    assert up.center[0] == pytest.approx(base.center[0], abs=1e-4)
    assert up.center[1] == pytest.approx(base.center[1] - 0.125 * base.size, abs=1e-3)


def test_crop_samples_the_mapped_pixels():
    pts = _rotated_face(203, 15.0)
    img = np.zeros((480, 640, 3), np.uint8)
    img[195:206, 295:306] = 255  # a bright square at the face centre (300, 200)
    crop = lm.crop_by_landmarks(img, pts, dsize=224, scale=1.5, vy_ratio=-0.1)
    x, y = lm.transform_points(np.array([[300.0, 200.0]]), crop.M_o2c)[0]
    assert crop.image[int(round(y)), int(round(x))].min() > 200
    unrotated = lm.crop_by_landmarks(img, pts, dsize=224, flag_do_rot=False)
    assert unrotated.M_o2c[0, 1] == 0 and unrotated.M_o2c[1, 0] == 0


def test_landmark106_preprocess_and_inverse_mapping():
    runner = FakeRunner({"fc1": np.zeros((1, 212), np.float32)}, input_names=("data",))
    img = np.zeros((400, 400, 3), np.uint8)
    img[..., 0] = 255
    box = np.array([100, 120, 228, 248], np.float32)  # 128 px square, centre (164, 184)
    pts = lm.Landmark106(runner)(img, box)
    assert pts.shape == (106, 2)
    assert np.allclose(pts, [164, 184], atol=1e-3)  # normalised 0 = crop centre = box centre
    blob = runner.calls[0]["data"]
    assert blob.shape == (1, 3, 192, 192)
    assert blob[0, 2, 96, 96] == 255 and blob[0, 0, 96, 96] == 0  # raw values, R/B swapped

    runner.outputs["fc1"] = np.full((1, 212), -1.0, np.float32)  # crop corner (0, 0)
    corner = lm.Landmark106(runner)(img, box)
    assert np.allclose(corner[0], [164 - 96, 184 - 96], atol=1e-3)  # scale 192 / (1.5·128) = 1


def test_landmark203_uses_third_output_of_the_original_model():
    third = np.tile([0.25, 0.75], 203)[None].astype(np.float32)
    runner = FakeRunner(
        {"a": np.zeros((1, 4), np.float32), "b": np.zeros((1, 2), np.float32), "c": third},
        input_names=("input",),
    )
    pts = lm.Landmark203(runner)(np.zeros((224, 224, 3), np.uint8), M_c2o=np.diag([2.0, 2.0, 1.0]))
    assert np.allclose(pts, [112, 336])
    assert runner.calls[0]["input"].shape == (1, 3, 224, 224)


# --------------------------------------------------------------------------- mesh + eyes


def test_blaze_anchor_grid():
    a = fm.blaze_anchors()
    assert a.shape == (896, 4)
    assert np.allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1]) and np.allclose(a[1], a[0])
    assert np.allclose(a[512, :2], [0.5 / 8, 0.5 / 8]) and np.allclose(a[517], a[512])
    assert np.allclose(a[518, :2], [1.5 / 8, 0.5 / 8])


def test_blaze_decode_and_weighted_nms():
    anchors = fm.blaze_anchors()
    raw = np.zeros((896, 16), np.float32)
    raw[600, :4] = (12.8, 0, 64, 64)  # centre moves +0.1, box 0.5 wide
    box = fm.decode_blaze(raw, anchors)[600]
    cx, cy = anchors[600, 0] + 0.1, anchors[600, 1]
    assert np.allclose(box[:4], 128 * np.array([cx - 0.25, cy - 0.25, cx + 0.25, cy + 0.25]), atol=1e-4)
    rows = np.zeros((3, 17), np.float32)
    rows[0, :4], rows[0, 16] = (0, 0, 10, 10), 0.9
    rows[1, :4], rows[1, 16] = (1, 1, 11, 11), 0.6
    rows[2, :4], rows[2, 16] = (50, 50, 60, 60), 0.7
    merged = fm.weighted_nms(rows, 0.3)
    assert merged.shape == (2, 17)
    assert np.allclose(merged[0, :4], (0.9 * rows[0, :4] + 0.6 * rows[1, :4]) / 1.5)
    assert merged[0, 16] == pytest.approx(0.75) and merged[1, 16] == pytest.approx(0.7)


def test_mesh_projection_matches_the_warped_roi():
    roi = np.array([200.0, 150.0, 120.0, 120.0, 0.4])
    corners = fm.roi_corners(roi)
    pts = np.array([[128, 128, 0], [256, 128, 0], [0, 0, 0]], np.float64)
    out = fm.project_mesh(pts, roi)
    assert np.allclose(out[0, :2], [200, 150])
    assert np.allclose(out[1, :2], (corners[1] + corners[2]) / 2, atol=1e-4)
    assert np.allclose(out[2, :2], corners[0], atol=1e-4)


def test_roi_rotation_from_eye_keypoints():
    det = np.zeros(17, np.float32)
    det[:4] = (40, 40, 80, 80)
    det[4:8] = (0.4, 0.5, 0.6, 0.4)  # second eye higher → face rolled
    roi = fm.roi_from_detection(det, (512, 512))
    assert roi[:4] == pytest.approx([240, 240, 240, 240])
    assert roi[4] == pytest.approx(-math.atan2(0.1, 0.2))


def test_eye_info_values_and_layout():
    lmk = np.zeros((1, 478, 3), np.float32)
    lmk[0, 33], lmk[0, 133] = (0, 0, 0), (2, 0, 0)
    for lo, up in fm.EYE_L_LIDS:
        lmk[0, lo], lmk[0, up] = (1, 0.25, 0), (1, -0.25, 0)
    lmk[0, 468] = (1, 0.5, 0)
    lmk[0, 263], lmk[0, 362] = (6, 0, 0), (4, 0, 0)
    for lo, up in fm.EYE_R_LIDS:
        lmk[0, lo], lmk[0, up] = (5, 0.2, 0), (5, -0.2, 0)
    lmk[0, 473] = (5, -0.5, 0)
    eye_open, eye_ball = fm.eye_info(lmk)
    assert eye_open.shape == (1, 2) and eye_ball.shape == (1, 6)
    assert np.allclose(eye_open, [[0.75, 0.6]], atol=1e-6)
    assert np.allclose(eye_ball, [[0.5, -0.5, 0.5, -0.5, 0, 0]], atol=1e-6)  # [Lx,Rx,Ly,Ry,Lz,Rz]


# --------------------------------------------------------------------------- HuBERT windows


def _hubert_rows(num_samples: int) -> int:
    """Rows HuBERT returns for ``num_samples`` (conv front end: window 400, hop 320)."""
    if num_samples < 400:
        return 0
    return (num_samples - 400) // 320 + 1


class _RowIndexHubert:
    """Fake HuBERT: the true row count, each row filled with its row index."""

    input_names = ("input_values",)
    output_names = ("encoding_out",)

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def __call__(self, input_values: torch.Tensor) -> dict[str, torch.Tensor]:
        n = input_values.shape[1]
        self.lengths.append(n)
        rows = _hubert_rows(n)
        return {"encoding_out": torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, 1024)}


def test_window_constants_and_valid_rows():
    assert hb.split_len() == 6480 and hb.hop_len() == 3200 and _hubert_rows(6480) == 20
    feats = hb.window_features(np.arange(20, dtype=np.float32)[:, None].repeat(4, 1))
    assert feats[:, 0].tolist() == [6.5, 8.5, 10.5, 12.5, 14.5]


@pytest.mark.parametrize("n", [1, 639, 640, 641, 3200, 4480, 16000, 16001, 33333])
def test_offline_feature_count(n):
    fake = _RowIndexHubert()
    feats = hb.HubertFeatureExtractor(fake).offline_features(np.zeros(n, np.float32))
    assert feats.shape == (math.ceil(n / 640), 1024)
    assert set(fake.lengths) == {6480}
    assert len(fake.lengths) == math.ceil(math.ceil(n / 640) / 5)


def test_online_windows_are_offline_windows_shifted_by_80_samples():
    n = 23456
    audio = np.arange(1, n + 1, dtype=np.float32)
    online = hb.online_windows(audio)
    offline = hb.offline_windows(audio)
    assert len(online) == math.ceil((n + 1920) / 3200)
    padded = np.concatenate([np.zeros(2000), audio, np.zeros(6480)])
    for i, w in enumerate(offline):
        assert np.array_equal(w, padded[3200 * i : 3200 * i + 6480])
    for i, w in enumerate(online[: len(offline)]):
        assert np.array_equal(w[:-80], offline[i][80:])  # same samples, 80 later
    assert all(w.shape == (6480,) for w in online)


def test_streaming_windower_matches_whole_utterance_windows():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=20000).astype(np.float32)
    windower = hb.StreamingWindower()
    got, pos = [], 0
    while pos < audio.size:
        step = int(rng.integers(1, 4000))
        got += windower.push(audio[pos : pos + step])
        pos += step
    got += windower.flush()
    expected = hb.online_windows(audio)
    assert len(got) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    # a window is released once its last sample arrived: window i needs sample 3200·i + 4560
    w = hb.StreamingWindower()
    assert len(w.push(np.zeros(4559, np.float32))) == 0
    assert len(w.push(np.zeros(1, np.float32))) == 1


def test_after_an_utterance_ends_the_windows_go_on_with_its_last_frames_as_past():
    rng = np.random.default_rng(1)
    first, second = (rng.normal(size=n).astype(np.float32) for n in (3 * 3200, 10000))
    windower = hb.StreamingWindower()
    ended = windower.push(first) + windower.end_utterance()
    assert len(ended) == 4 and np.all(ended[-1][1920:] == 0)  # the window past the end: its past, then silence
    after = windower.push(second) + windower.flush()
    # an utterance ending on the 5-frame window grid: the next windows are those of one long stream
    expected = hb.online_windows(np.concatenate([first, second]))[3:]
    assert len(after) == len(expected) and all(np.array_equal(a, b) for a, b in zip(after, expected))
    # a partial last frame is completed with silence: the next audio starts at the frame boundary
    windower = hb.StreamingWindower()
    windower.push(first[:1000])
    windower.end_utterance()
    next_window = windower.push(second)[0]
    padded = np.concatenate([np.zeros(1920, np.float32), first[:1000], np.zeros(280, np.float32)])
    assert np.array_equal(next_window[:1920], padded[-1920:])
    assert np.array_equal(next_window[1920:], second[: 6480 - 1920])


# --------------------------------------------------------------------------- stand-in files

EXPECTED_IO = {
    ("onnx", "insightface_det.onnx"): (
        {"image": [1, 3, 512, 512]},
        {
            f"{k}{i}": [n, d]
            for k, d in (("scores", 1), ("boxes", 4), ("kps", 10))
            for i, n in ((1, 8192), (2, 2048), (3, 512))
        },
    ),
    ("onnx", "landmark106.onnx"): ({"data": [1, 3, 192, 192]}, {"fc1": [1, 212]}),
    ("onnx", "landmark203.onnx"): ({"input": [1, 3, 224, 224]}, {"landmarks": [1, 406]}),
    ("onnx", "blaze_face.onnx"): (
        {"input": [1, 128, 128, 3]},
        {"regressors": [1, 896, 16], "classificators": [1, 896, 1]},
    ),
    ("onnx", "face_mesh.onnx"): (
        {"input": [1, 256, 256, 3]},
        {"Identity": [1, 1, 1, 1434], "Identity_1": [1, 1, 1, 1], "Identity_2": [1, 1, 1, 1]},
    ),
    ("onnx", "hubert.onnx"): ({"input_values": [1, None]}, {"encoding_out": [None, 1024]}),
    ("ori", "det_10g.onnx"): (
        {"input.1": [1, 3, 512, 512]},
        dict(
            zip(
                ("448", "471", "494", "451", "474", "497", "454", "477", "500"),
                ([8192, 1], [2048, 1], [512, 1], [8192, 4], [2048, 4], [512, 4], [8192, 10], [2048, 10], [512, 10]),
            )
        ),
    ),  # fmt: skip
    ("ori", "2d106det.onnx"): ({"data": [1, 3, 192, 192]}, {"fc1": [1, 212]}),
    ("ori", "landmark203.onnx"): (
        {"input": [1, 3, 224, 224]},
        {"output_0": [1, 212], "output_1": [1, 2], "output_2": [1, 406]},
    ),
    ("ori", "hubert_streaming_fix_kv.onnx"): ({"input_values": [1, None]}, {"encoding_out": [None, 1024]}),
}


@pytest.mark.parametrize("key", list(EXPECTED_IO), ids=lambda k: f"{k[0]}/{k[1]}")
def test_stand_in_io_names_shapes_and_dtypes(models, key):
    folder, name = key
    inputs, outputs = EXPECTED_IO[key]
    sess = ort.InferenceSession(str(models[folder] / name), providers=["CPUExecutionProvider"])

    def dims(v):
        return [d if isinstance(d, int) else None for d in v.shape]

    assert {i.name: dims(i) for i in sess.get_inputs()} == inputs
    assert {o.name: dims(o) for o in sess.get_outputs()} == outputs
    assert [o.name for o in sess.get_outputs()] == list(outputs)  # declared order matters (det_10g)
    assert all(v.type == "tensor(float)" for v in [*sess.get_inputs(), *sess.get_outputs()])
    feeds = {i.name: np.zeros([d or 6480 for d in dims(i)], np.float32) for i in sess.get_inputs()}
    for out, meta in zip(sess.run(None, feeds), sess.get_outputs()):
        want = [d if d is not None else 20 for d in outputs[meta.name]]
        assert list(out.shape) == want


def test_stand_in_files_are_small_and_deterministic(models, tmp_path):
    write_aux_test_models(tmp_path / "o", tmp_path / "a", seed=7, hubert="small")

    def digest(folder: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    assert digest(tmp_path / "o") == digest(models["onnx"])
    assert digest(tmp_path / "a") == digest(models["ori"])
    assert set(digest(models["ori"])) >= {
        "det_10g.onnx",
        "2d106det.onnx",
        "landmark203.onnx",
        "hubert_streaming_fix_kv.onnx",
    }
    total = sum(p.stat().st_size for f in models.values() for p in f.iterdir())
    assert total < 3_000_000


def test_stand_in_hubert_rows_follow_the_conv_front_end(models):
    runner = OrtRunner(models["onnx"] / "hubert.onnx")
    ext = hb.HubertFeatureExtractor(runner)
    rng = np.random.default_rng(1)
    for n in (3240, 6480, 7001, 12960):
        assert ext.encode(rng.normal(size=n)).shape == ((n - 400) // 320 + 1, 1024)
    a = ext.chunk_features(rng.normal(size=6480))
    b = ext.chunk_features(rng.normal(size=6480))
    assert a.shape == (5, 1024) and not np.allclose(a, b)
    assert ext.offline_features(rng.normal(size=16000).astype(np.float32)).shape == (25, 1024)


@pytest.mark.parametrize("folder,det_name", [("onnx", "insightface_det.onnx"), ("ori", "det_10g.onnx")])
def test_stand_in_detector_one_face_on_portrait_none_on_flat(models, portrait, folder, det_name):
    det = fd.FaceDetector(OrtRunner(models[folder] / det_name))
    faces = det(portrait)
    assert len(faces) == 1
    x1, y1, x2, y2 = faces.boxes[0]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512 and (x2 - x1) > 100
    assert faces.kps.shape == (1, 5, 2)
    assert len(det(np.full((512, 512, 3), 128, np.uint8))) == 0
    assert len(det(np.full((300, 700, 3), 90, np.uint8))) == 0  # letterbox edge is not texture
    assert len(det(np.ascontiguousarray(portrait[::2, :]))) == 1  # non-square portrait


def test_registration_chain_on_portrait(models, portrait):
    onnx = models["onnx"]
    box, _ = fd.largest_face(fd.FaceDetector(OrtRunner(onnx / "insightface_det.onnx"))(portrait))
    pts106 = lm.Landmark106(OrtRunner(onnx / "landmark106.onnx"))(portrait, box)
    assert pts106.shape == (106, 2)
    assert np.all(pts106.min(0) >= box[:2] - 5) and np.all(pts106.max(0) <= box[2:] + 5)
    pts203 = lm.Landmark203(OrtRunner(onnx / "landmark203.onnx")).from_landmarks(portrait, pts106)
    assert pts203.shape == (203, 2) and np.abs(pts203.mean(0) - pts106.mean(0)).max() < 0.05 * (box[2] - box[0])
    crop = lm.crop_by_landmarks(portrait, pts203, dsize=512, scale=2.3, vy_ratio=-0.125)
    mesh = fm.BlazeFaceMesh(OrtRunner(onnx / "blaze_face.onnx"), OrtRunner(onnx / "face_mesh.onnx"))(crop.image)
    assert mesh.shape == (1, 478, 3) and mesh.dtype == np.float32
    assert mesh[0, :, :2].min() > 0 and mesh[0, :, :2].max() < 1
    eye_open, eye_ball = fm.eye_info(mesh)
    assert eye_open.shape == (1, 2) and eye_ball.shape == (1, 6)
    assert np.all((eye_open > 0.3) & (eye_open < 1.5)) and np.isfinite(eye_ball).all()
    with pytest.raises(SourceError):
        fm.BlazeFaceMesh(OrtRunner(onnx / "blaze_face.onnx"), OrtRunner(onnx / "face_mesh.onnx"))(
            np.full((512, 512, 3), 128, np.uint8)
        )


def test_face_landmarker_task_bundle(models, portrait):
    pytest.importorskip("mediapipe")
    ori = models["ori"]
    box, _ = fd.largest_face(fd.FaceDetector(OrtRunner(ori / "det_10g.onnx"))(portrait))
    pts106 = lm.Landmark106(OrtRunner(ori / "2d106det.onnx"))(portrait, box)
    pts203 = lm.Landmark203(OrtRunner(ori / "landmark203.onnx")).from_landmarks(portrait, pts106)
    crop = lm.crop_by_landmarks(portrait, pts203, dsize=512, scale=2.3, vy_ratio=-0.125)
    landmarker = fm.MediaPipeFaceLandmarker(ori / "face_landmarker.task")
    try:
        mesh = landmarker(crop.image)
        assert mesh.shape == (1, 478, 3)
        eye_open, eye_ball = fm.eye_info(mesh)
        assert eye_open.shape == (1, 2) and eye_ball.shape == (1, 6) and np.all(eye_open > 0.3)
        with pytest.raises(SourceError):
            landmarker(np.full((512, 512, 3), 128, np.uint8))
    finally:
        landmarker.close()


def test_face_landmarker_task_opens_with_blendshapes_and_matrixes(models):
    """Upstream's options (blend shapes + transformation matrixes on) open the stand-in bundle too."""
    pytest.importorskip("mediapipe")
    import cv2
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    task = models["ori"] / "face_landmarker.task"
    image = cv2.cvtColor(cv2.imread(str(EXAMPLE_IMAGE)), cv2.COLOR_BGR2RGB)
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(task)),
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
        num_faces=1,
    )
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
    assert len(result.face_landmarks) == 1 and len(result.face_landmarks[0]) == fm.NUM_MESH_POINTS
    assert len(result.face_blendshapes) == 1 and len(result.face_blendshapes[0]) == 52
    scores = np.array([c.score for c in result.face_blendshapes[0]])
    assert np.all((scores >= 0) & (scores <= 1))
    assert len(result.facial_transformation_matrixes) == 1
    matrix = np.asarray(result.facial_transformation_matrixes[0])
    assert matrix.shape == (4, 4) and np.isfinite(matrix).all()

    both = fm.MediaPipeFaceLandmarker(task, output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    plain = fm.MediaPipeFaceLandmarker(task)
    try:
        np.testing.assert_array_equal(both(image), plain(image))  # the extra outputs leave the landmarks alone
    finally:
        both.close()
        plain.close()

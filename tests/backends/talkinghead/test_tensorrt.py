"""The TensorRT path without TensorRT: binding tables vs the ONNX twins, the runner's two API
generations on test doubles, the preflight messages, the --fallback tree, the engine build plan.

Tests that need TensorRT and a GPU skip with a reason.
"""

from __future__ import annotations

import ctypes
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ditto.backends.talkinghead import preflight
from ditto.backends.talkinghead.config import CFG_PKL_NAMES, load_cfg, onnx_model_name, read_cfg_dict
from ditto.backends.talkinghead.runtime import tensorrt_runner as tr
from ditto.backends.talkinghead.runtime.loader import load_runner
from ditto.backends.talkinghead.runtime.trt_bindings import (
    BATCH_AXIS_MODELS,
    ENGINE_MODELS,
    SHAPE_PROFILES,
    ShapeProfile,
    TensorSpec,
    binding_problems,
    expected_bindings,
    model_for_file,
)
from ditto.errors import ConfigError
from ditto.tools import build_engines
from ditto.tools.cfg_writers import build_cfg_dict, write_cfg_pkl
from tests.conftest import ROOT

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
NEEDS_TRT = pytest.mark.skipif(
    not (HAVE_TRT and torch.cuda.is_available()), reason="needs the tensorrt package and a CUDA GPU"
)
_ONNX_TYPES = {1: "float32", 10: "float16", 6: "int32", 7: "int64"}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_twins(checkpoint_tree) -> Path:
    """The ``ditto_onnx`` folder of the session's make_test_checkpoints tree (read only)."""
    return checkpoint_tree.onnx


def _engine_names(cfg: dict) -> list[str]:
    names = [v["model_path"] for v in cfg["base_cfg"].values() if "model_path" in v]
    lm = cfg["base_cfg"]["landmark478_cfg"]
    names += [lm[k] for k in ("blaze_face_model_path", "face_mesh_model_path", "task_path") if lm[k]]
    return names + [cfg["audio2motion_cfg"]["model_path"]]


def _touch_tree(root: Path, cfg: dict, *, content: bytes = b"not an engine") -> None:
    for name in _engine_names(cfg):
        if name:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(content)


@pytest.fixture
def trt_tree(tmp_path) -> SimpleNamespace:
    """checkpoints/{ditto_trt_Ampere_Plus (dummy engines), ditto_cfg (trt, trt_online, pytorch pkls)}."""
    ckpt = tmp_path / "checkpoints"
    trt_root = ckpt / "ditto_trt_Ampere_Plus"
    cfg_dir = ckpt / "ditto_cfg"
    trt_root.mkdir(parents=True)
    for flavor in ("trt", "trt_online", "pytorch"):
        write_cfg_pkl(cfg_dir, flavor)
    _touch_tree(trt_root, build_cfg_dict("trt"))
    return SimpleNamespace(
        ckpt=ckpt,
        trt_root=trt_root,
        cfg_dir=cfg_dir,
        trt_pkl=cfg_dir / CFG_PKL_NAMES["trt"],
        online_pkl=cfg_dir / CFG_PKL_NAMES["trt_online"],
    )


def _settings(**kw):
    base = {"device": "auto", "trt_plugin": None, "fallback": False, "data_root": None, "cfg_pkl": None}
    return SimpleNamespace(**(base | kw))


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


@pytest.fixture
def fake_gpu(monkeypatch):
    """A fake `tensorrt` 8.6.1 module and a torch that reports one CUDA GPU of a given capability."""
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="8.6.1.post1"))
    state = {"cc": (8, 6)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: state["cc"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake GPU")
    return state


# -- binding tables -----------------------------------------------------------------------------


def _onnx_specs(path: Path) -> list[TensorSpec]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(v, is_input: bool) -> TensorSpec:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
        return TensorSpec(v.name, is_input, dims, _ONNX_TYPES[v.type.tensor_type.elem_type])

    inits = {i.name for i in model.graph.initializer}
    return [spec(v, True) for v in model.graph.input if v.name not in inits] + [
        spec(v, False) for v in model.graph.output
    ]


@pytest.mark.parametrize("model", ENGINE_MODELS)
def test_binding_table_matches_onnx_twin(onnx_twins: Path, model: str) -> None:
    """The twins of the batched networks declare the official table with a dynamic axis 0; both forms fit."""
    stem = "lmdm_v0.4_hubert" if model == "lmdm" else model
    twin = _onnx_specs(onnx_twins / f"{stem}.onnx")
    assert list(expected_bindings(model, dynamic_batch=True)) == twin
    assert all(s.shape[0] == -1 for s in twin) == (model in BATCH_AXIS_MODELS)
    assert binding_problems(model, twin) == binding_problems(model, expected_bindings(model)) == []


def test_every_engine_of_the_trt_pkl_has_a_table_and_an_onnx_twin(onnx_twins: Path) -> None:
    names = _engine_names(build_cfg_dict("trt"))
    assert len(names) == 12
    models = {model_for_file(n) for n in names}
    assert models == set(ENGINE_MODELS)
    for name in names:
        assert (onnx_twins / onnx_model_name(name)).is_file(), name


def test_model_for_file() -> None:
    assert model_for_file("x/warp_network_fp16.engine") == "warp_network"
    assert model_for_file("lmdm_v0.4_hubert_fp32.engine") == "lmdm"
    assert model_for_file("hubert.onnx") == "hubert"
    assert model_for_file("something_else_fp16.engine") is None


def test_binding_problems() -> None:
    lmdm = list(expected_bindings("lmdm"))
    as_engine = [TensorSpec(s.name, s.is_input, s.shape, "int32" if s.dtype == "int64" else s.dtype) for s in lmdm]
    assert binding_problems("lmdm", as_engine) == []  # TRT 8.6: time_cond INT32
    assert binding_problems("lmdm", lmdm) == []  # TRT 10 may keep INT64
    bad = [TensorSpec("time_cond", True, (1,), "float32") if s.name == "time_cond" else s for s in lmdm]
    assert any("time_cond" in p and "float32" in p for p in binding_problems("lmdm", bad))
    assert binding_problems("lmdm", as_engine, lmdm_dims=(80, 265, 1059))  # cond width differs
    hubert = list(expected_bindings("hubert"))
    assert hubert[0].shape == (1, -1) and hubert[1].shape == (-1, 1024)
    static = [TensorSpec("input_values", True, (1, 6480), "float32"), hubert[1]]
    assert binding_problems("hubert", static) == ["'input_values' has shape (1, 6480), expected (1, -1)"]
    problems = binding_problems("stitch_network", [TensorSpec("kp_source", True, (1, 21, 3), "float32")])
    assert problems[0].startswith("missing tensors ['kp_driving', 'out']")
    stitch = list(expected_bindings("stitch_network", dynamic_batch=True))
    assert stitch[0].shape == (-1, 21, 3) and binding_problems("stitch_network", stitch) == []
    fixed_at_2 = [TensorSpec(s.name, s.is_input, (2, 21, 3), s.dtype) for s in stitch]
    assert len(binding_problems("stitch_network", fixed_at_2)) == 3
    batched_hubert = [TensorSpec("input_values", True, (-1, -1), "float32"), hubert[1]]
    assert binding_problems("hubert", batched_hubert) == ["'input_values' has shape (-1, -1), expected (1, -1)"]
    assert SHAPE_PROFILES["hubert"]["input_values"].max == (1, 12960)


# -- the runner on test doubles (both TensorRT API generations) ---------------------------------

FAKE_TRT = SimpleNamespace(
    __version__="8.6.1",
    DataType=SimpleNamespace(
        FLOAT="FLOAT", HALF="HALF", INT32="INT32", INT64="INT64", INT8="INT8", BOOL="BOOL", UINT8="UINT8"
    ),
    TensorIOMode=SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
)
_TRT_TYPE = {"float32": "FLOAT", "float16": "HALF", "int32": "INT32", "int64": "INT64"}
_CT = {"float32": ctypes.c_float, "int32": ctypes.c_int32}


def _engine_specs(model: str) -> list[TensorSpec]:
    """What an official TRT 8.6 engine of ``model`` declares: ONNX IO with int64 → int32."""
    return [
        TensorSpec(s.name, s.is_input, s.shape, "int32" if s.dtype == "int64" else s.dtype)
        for s in expected_bindings(model)
    ]


class FakeEngine86:
    """TRT 8.6 binding-index API."""

    num_optimization_profiles = 1

    def __init__(self, specs, profiles=None):
        self.specs, self.profiles = specs, profiles or {}
        self.num_bindings = len(specs)

    def get_binding_name(self, i):
        return self.specs[i].name

    def binding_is_input(self, i):
        return self.specs[i].is_input

    def get_binding_shape(self, i):
        return self.specs[i].shape

    def get_binding_dtype(self, i):
        return _TRT_TYPE[self.specs[i].dtype]

    def get_profile_shape(self, profile, i):
        p = self.profiles[self.specs[i].name]
        return [p.min, p.opt, p.max]


class FakeEngine10:
    """TRT 10 named-tensor API."""

    def __init__(self, specs, profiles=None):
        self.by_name = {s.name: s for s in specs}
        self.order, self.profiles = [s.name for s in specs], profiles or {}
        self.num_io_tensors = len(specs)

    def get_tensor_name(self, i):
        return self.order[i]

    def get_tensor_mode(self, n):
        return "INPUT" if self.by_name[n].is_input else "OUTPUT"

    def get_tensor_shape(self, n):
        return self.by_name[n].shape

    def get_tensor_dtype(self, n):
        return _TRT_TYPE[self.by_name[n].dtype]

    def get_tensor_profile_shape(self, n, profile):
        p = self.profiles[n]
        return [p.min, p.opt, p.max]


@pytest.mark.parametrize("model", ["lmdm", "hubert", "warp_network", "insightface_det"])
def test_read_io_table_same_through_both_apis(model: str) -> None:
    specs, profiles = _engine_specs(model), SHAPE_PROFILES.get(model, {})
    old = tr.read_io_table(FakeEngine86(specs, profiles), FAKE_TRT, "bindings")
    new = tr.read_io_table(FakeEngine10(specs, profiles), FAKE_TRT, "tensors")
    assert [b.spec for b in old] == [b.spec for b in new] == specs
    assert binding_problems(model, [b.spec for b in old]) == []
    assert [b.profile for b in old] == [b.profile for b in new]
    if model == "hubert":
        assert old[0].profile == SHAPE_PROFILES["hubert"]["input_values"]
    if model == "lmdm":
        assert {b.spec.name: b.torch_dtype for b in old}["time_cond"] == torch.int32


def test_engine_binding_check(caplog) -> None:
    """Wrong names/types refuse the engine; a differing shape is only logged."""
    engine = object.__new__(tr.TensorRTEngine)
    engine.path, engine.model = "/ck/ditto_trt_x/lmdm_v0.4_hubert_fp32.engine", "lmdm"
    specs = _engine_specs("lmdm")
    engine.bindings = tr.read_io_table(FakeEngine10(specs), FAKE_TRT, "tensors")
    engine._check_bindings(None)
    engine._check_bindings((80, 265, 1103))
    assert not caplog.records
    engine._check_bindings((80, 265, 1059))
    assert "'cond' has shape (1, 80, 1103), expected (1, 80, 1059)" in caplog.text
    bad = [TensorSpec("t", True, (1,), "int32") if s.name == "time_cond" else s for s in specs]
    engine.bindings = tr.read_io_table(FakeEngine10(bad), FAKE_TRT, "tensors")
    with pytest.raises(ConfigError, match=r"does not fit the Ditto 'lmdm' model: missing tensors \['time_cond'\]"):
        engine._check_bindings(None)


def _read(ptr: int, spec_dtype: str, n: int) -> np.ndarray:
    return np.ctypeslib.as_array((_CT[spec_dtype] * n).from_address(ptr)).copy()


class FakeContext:
    """Runs a toy 'LMDM' on host memory, per row: x_start = x + time_cond, pred_noise = cond_frame
    (broadcast). Outputs take the batch of the input shape set last for ``x`` (TensorRT's shape
    propagation, for engines with a dynamic batch axis)."""

    def __init__(self, specs, api):
        self.specs, self.api, self.calls = specs, api, []
        self.addr: dict[str, int] = {}
        self.index = {s.name: i for i, s in enumerate(specs)}
        self.shapes = {s.name: s.shape for s in specs if s.is_input}

    def set_binding_shape(self, i, shape):
        return self.set_input_shape(self.specs[i].name, shape)

    def set_input_shape(self, n, shape):
        self.calls.append(("shape", n, shape))
        self.shapes[n] = tuple(shape)
        return True

    def get_tensor_shape(self, n):
        spec = self.specs[self.index[n]]
        return self.shapes[n] if spec.is_input else (self.shapes["x"][0], *spec.shape[1:])

    def get_binding_shape(self, i):
        return self.get_tensor_shape(self.specs[i].name)

    def set_tensor_address(self, n, p):
        self.addr[n] = p

    def execute_async_v2(self, bindings, stream_handle):
        assert self.api == "bindings" and stream_handle == 0
        self._run({s.name: bindings[i] for i, s in enumerate(self.specs)})
        return True

    def execute_async_v3(self, stream):
        assert self.api == "tensors"
        self._run(self.addr)
        return True

    def _run(self, ptr):
        b = self.shapes["x"][0]
        x = _read(ptr["x"], "float32", b * 80 * 265).reshape(b, -1)
        t = _read(ptr["time_cond"], "int32", b)  # the engine's INT32 binding
        cf = _read(ptr["cond_frame"], "float32", b * 265).reshape(b, -1)
        n = b * 80 * 265
        np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr["x_start"]))[:] = (x + t[:, None]).ravel()
        np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr["pred_noise"]))[:] = np.tile(cf, 80).ravel()
        self.calls.append(("run", b))


def _fake_engine(api, *, batch: build_engines.BatchRange | None = None):
    """An LMDM engine double: the official batch-1 IO, or with ``batch`` a dynamic axis 0 and the
    profile build_engines plans for it."""
    specs, profiles = _engine_specs("lmdm"), {}
    if batch is not None:
        specs = [TensorSpec(s.name, s.is_input, (-1, *s.shape[1:]), s.dtype) for s in specs]
        profiles, _ = build_engines.plan_profiles("lmdm", {s.name: s.shape for s in specs if s.is_input}, batch)
    engine = FakeEngine86(specs, profiles) if api == "bindings" else FakeEngine10(specs, profiles)
    bindings = tr.read_io_table(engine, FAKE_TRT, api)
    contexts = []

    def create_context():
        contexts.append(FakeContext(specs, api))
        return contexts[-1]

    return SimpleNamespace(
        path="lmdm_v0.4_hubert_fp32.engine",
        device=torch.device("cpu"),
        flavor=api,
        bindings=bindings,
        specs=tuple(specs),
        create_context=create_context,
    ), contexts


@pytest.mark.parametrize("api", ["bindings", "tensors"])
def test_runner_wires_buffers_and_casts_time_cond(api) -> None:
    engine, contexts = _fake_engine(api)
    runner = tr.TensorRTRunner(engine=engine)
    assert type(runner._api) is tr.TRT_APIS[api] and runner._api.flavor == runner.api == api  # picked once
    assert runner.input_names == ("x", "cond_frame", "cond", "time_cond")
    assert runner.output_names == ("pred_noise", "x_start")
    g = torch.Generator().manual_seed(0)
    x, cf = torch.randn(1, 80, 265, generator=g), torch.randn(1, 265, generator=g)
    cond = torch.randn(1, 80, 1103, generator=g)
    out = runner(x=x, cond_frame=cf, cond=cond, time_cond=torch.tensor([899], dtype=torch.int64))
    assert out["x_start"].dtype == torch.float32 and out["x_start"].shape == (1, 80, 265)
    assert torch.allclose(out["x_start"], x + 899)
    assert torch.equal(out["pred_noise"], cf[:, None, :].expand(1, 80, 265))
    ctx = contexts[0]
    assert [c for c in ctx.calls if c[0] == "shape"][-1] == ("shape", "time_cond", (1,))
    runner(x=x, cond_frame=cf, cond=cond, time_cond=torch.tensor([99]))
    assert sum(c[0] == "shape" for c in ctx.calls) == 4  # shapes set once, not per call
    with pytest.raises(ValueError, match="expected"):
        runner(x=x[:, :40], cond_frame=cf, cond=cond, time_cond=torch.tensor([99]))
    with pytest.raises(TypeError, match="time_cond"):
        runner(x=x, cond_frame=cf, cond=cond)
    assert len(contexts) == 1


def _lmdm_batch(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(b, 80, 265, generator=g),
        "cond_frame": torch.randn(b, 265, generator=g),
        "cond": torch.randn(b, 80, 1103, generator=g),
        "time_cond": torch.arange(b, dtype=torch.int64) * 100,
    }


@pytest.mark.parametrize("api", ["bindings", "tensors"])
def test_dynamic_batch_engine_sets_shapes_per_batch(api) -> None:
    engine, contexts = _fake_engine(api, batch=build_engines.DEFAULT_BATCH)
    runner = tr.TensorRTRunner(engine=engine)
    assert runner.max_batch == 16
    ins = _lmdm_batch(3)
    out = runner(**ins)
    ctx = contexts[0]
    assert [c for c in ctx.calls if c[0] == "shape"] == [
        ("shape", "x", (3, 80, 265)),
        ("shape", "cond_frame", (3, 265)),
        ("shape", "cond", (3, 80, 1103)),
        ("shape", "time_cond", (3,)),
    ]
    assert [c for c in ctx.calls if c[0] == "run"] == [("run", 3)]  # one engine call for the batch
    assert out["x_start"].shape == out["pred_noise"].shape == (3, 80, 265)
    assert torch.equal(out["x_start"], ins["x"] + ins["time_cond"][:, None, None].float())
    assert torch.equal(out["pred_noise"], ins["cond_frame"][:, None, :].expand(3, 80, 265))
    ctx.calls.clear()
    assert runner(**_lmdm_batch(2))["x_start"].shape == (2, 80, 265)  # a new batch: shapes set again
    assert ("shape", "x", (2, 80, 265)) in ctx.calls
    ctx.calls.clear()
    big = _lmdm_batch(17)
    out = runner(**big)  # past the profile's max: 16 rows, then 1
    assert [c for c in ctx.calls if c[0] == "run"] == [("run", 16), ("run", 1)]
    assert torch.equal(out["x_start"], big["x"] + big["time_cond"][:, None, None].float())
    tight = tr.TensorRTRunner(engine=_fake_engine(api, batch=build_engines.BatchRange(2, 4, 4))[0])
    assert tight.max_batch == 4
    with pytest.raises(ValueError, match=r"outside the engine's profile \[2, 4\]"):
        tight(**_lmdm_batch(1))


@pytest.mark.parametrize("api", ["bindings", "tensors"])
def test_fixed_batch_engine_runs_a_batch_row_by_row(api) -> None:
    engine, contexts = _fake_engine(api)
    runner = tr.TensorRTRunner(engine=engine)
    assert runner.max_batch == 1
    ins = _lmdm_batch(3)
    out = runner(**ins)
    ctx = contexts[0]
    assert [c for c in ctx.calls if c[0] == "run"] == [("run", 1)] * 3  # same context, one call per row
    assert sum(c[0] == "shape" for c in ctx.calls) == 4  # every row has the engine's batch-1 shapes
    rows = [runner(**{k: v[i : i + 1] for k, v in ins.items()}) for i in range(3)]
    for name in runner.output_names:
        assert out[name].shape == (3, 80, 265)
        assert torch.equal(out[name], torch.cat([r[name] for r in rows]))
    assert torch.equal(out["x_start"][2], ins["x"][2] + 200)
    with pytest.raises(ValueError, match="do not share a leading batch axis"):
        runner(**{**ins, "cond": ins["cond"][:2]})


def test_hubert_length_outside_profile_is_refused() -> None:
    specs, profiles = _engine_specs("hubert"), SHAPE_PROFILES["hubert"]
    bindings = tr.read_io_table(FakeEngine10(specs, profiles), FAKE_TRT, "tensors")
    engine = SimpleNamespace(
        path="hubert_fp32.engine",
        device=torch.device("cpu"),
        flavor="tensors",
        bindings=bindings,
        create_context=lambda: SimpleNamespace(),
    )
    runner = tr.TensorRTRunner(engine=engine)
    assert runner.max_batch == 1  # HuBERT's axis 0 is fixed: a batch of windows is one call per window
    with pytest.raises(ValueError, match=r"outside the engine's profile \[3240, 12960\]"):
        runner(input_values=torch.zeros(1, 16000))


def test_versions_pick_the_api() -> None:
    assert tr.tensorrt_version(SimpleNamespace(__version__="8.6.1.post1")) == (8, 6, 1)
    assert tr.api_flavor((8, 6, 1)) == "bindings"
    assert tr.api_flavor((10, 3, 0)) == "tensors"
    with pytest.raises(ConfigError, match="too old"):
        tr.check_tensorrt_version(SimpleNamespace(__version__="8.5.3"))


@pytest.mark.parametrize(
    "messages, kind",
    [
        (
            [
                "Serialization assertion stdVersionRead == serializationVersion failed.Version tag does not match. "
                "Note: Current Version: 236, Serialized Engine Version: 232"
            ],
            "version",
        ),
        (
            [
                "The engine plan file is not compatible with this version of TensorRT, expecting library version 10.3.0 "
                "got 8.6.1, please rebuild."
            ],
            "version",
        ),
        (
            [
                "The engine plan file is generated on an incompatible device, expecting compute 8.9 got compute 7.5, "
                "please rebuild."
            ],
            "hardware",
        ),
        (
            [
                "getPluginCreator could not find plugin: GridSample3D version: 1",
                "Cannot deserialize plugin since corresponding IPluginCreator not found in Plugin Registry",
            ],
            "plugin",
        ),
        (["something else"], "unknown"),
    ],
)
def test_deserialize_failures_are_explained(messages, kind) -> None:
    assert preflight.classify_deserialize_failure(messages) == kind
    text = preflight.explain_deserialize_failure(
        "/ck/ditto_trt_Ampere_Plus/decoder_fp16.engine", messages, trt_version="10.3.0", gpu="Fake GPU (sm_89)"
    )
    assert "/ck/ditto_trt_Ampere_Plus/decoder_fp16.engine" in text and "Fake GPU" in text
    assert "python -m ditto.tools.build_engines --onnx_dir /ck/ditto_onnx --out_dir /ck/ditto_trt_local" in text
    if kind == "plugin":
        assert "--trt_plugin" in text


def test_failures_are_facts_worded_by_preflight(tmp_path, monkeypatch) -> None:
    """The runner raises TensorRTUnusable with the facts; its message is preflight.diagnose's."""
    with pytest.raises(tr.TensorRTUnusable) as info:
        tr.check_tensorrt_version(SimpleNamespace(__version__="8.5.3"))
    assert info.value.failure == tr.TensorRTTooOld((8, 5, 3))
    assert str(info.value) == preflight.diagnose(info.value.failure) and "TensorRT >= 8.6" in str(info.value)
    with pytest.raises(tr.TensorRTUnusable) as info:
        tr.load_plugin_library(tmp_path / "absent.so")
    assert info.value.failure == tr.PluginMissing(str(tmp_path / "absent.so"))
    (tmp_path / "bad.so").write_bytes(b"not a library")
    with pytest.raises(tr.TensorRTUnusable, match="cannot load the TensorRT plugin library") as info:
        tr.load_plugin_library(tmp_path / "bad.so")
    assert isinstance(info.value.failure, tr.PluginUnloadable) and info.value.failure.detail
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    with pytest.raises(tr.TensorRTUnusable, match="needs a CUDA device, got cpu") as info:
        tr.TensorRTEngine(tmp_path / "decoder_fp16.engine", device="cpu")
    assert info.value.failure == tr.NoCudaDevice(str(tmp_path / "decoder_fp16.engine"), "cpu", gpu_visible=True)
    rejected = tr.EngineRejected(
        "/ck/ditto_trt_Ampere_Plus/decoder_fp16.engine",
        "10.3.0",
        "Fake GPU (sm_89)",
        ("getPluginCreator could not find plugin: GridSample3D version: 1",),
    )
    assert preflight.diagnose(rejected) == preflight.explain_deserialize_failure(
        rejected.path, rejected.messages, trt_version="10.3.0", gpu="Fake GPU (sm_89)"
    )
    engine = object.__new__(tr.TensorRTEngine)
    engine.path, engine.model = "/ck/ditto_trt_x/lmdm_v0.4_hubert_fp32.engine", "lmdm"
    bad = [TensorSpec("t", True, (1,), "int32") if s.name == "time_cond" else s for s in _engine_specs("lmdm")]
    engine.bindings = tr.read_io_table(FakeEngine86(bad), FAKE_TRT, "bindings")
    with pytest.raises(tr.TensorRTUnusable) as info:
        engine._check_bindings(None)
    assert info.value.failure.model == "lmdm" and "missing tensors ['time_cond']" in info.value.failure.problems
    with pytest.raises(TypeError, match="not a TensorRT failure"):
        preflight.diagnose("nope")


def test_loader_without_tensorrt(tmp_path, no_tensorrt) -> None:
    engine = tmp_path / "decoder_fp16.engine"
    engine.write_bytes(b"x")
    with pytest.raises(ConfigError, match="requirements-trt.txt") as info:
        load_runner("decoder", engine, device="cuda")
    assert isinstance(info.value.failure, tr.TensorRTMissing)


# -- preflight ----------------------------------------------------------------------------------


def test_preflight_ignores_other_trees(trt_tree) -> None:
    pytorch_root = trt_tree.ckpt / "ditto_pytorch"
    cfg = load_cfg(trt_tree.cfg_dir / CFG_PKL_NAMES["pytorch"], pytorch_root, check_files=False)
    assert not preflight.uses_tensorrt(cfg)
    preflight.check_trt_tree(cfg, _settings())  # no-op


def test_preflight_without_tensorrt(trt_tree, no_tensorrt) -> None:
    cfg = load_cfg(trt_tree.online_pkl, trt_tree.trt_root)
    assert len(preflight.trt_model_files(cfg)) == 12
    with pytest.raises(ConfigError) as info:
        preflight.check_trt_tree(cfg, _settings())
    msg = str(info.value)
    assert "v0.4_hubert_cfg_trt_online.pkl selects TensorRT engines" in msg
    assert "'tensorrt' Python package" in msg and "pip install -r requirements-trt.txt" in msg
    assert "--fallback" in msg


def test_preflight_names_missing_engines(trt_tree) -> None:
    (trt_tree.trt_root / "warp_network_fp16.engine").unlink()
    cfg = load_cfg(trt_tree.trt_pkl, trt_tree.trt_root, check_files=False)
    with pytest.raises(ConfigError, match=r"missing: .*warp_network_fp16\.engine.*build_engines"):
        preflight.check_trt_tree(cfg, _settings())


def test_preflight_cpu_device_and_no_gpu(trt_tree, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__="10.3.0"))
    cfg = load_cfg(trt_tree.trt_pkl, trt_tree.trt_root)
    with pytest.raises(ConfigError, match="--device cpu was given"):
        preflight.check_trt_tree(cfg, _settings(device="cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        preflight.check_trt_tree(cfg, _settings())


def test_preflight_pre_ampere_gpu(trt_tree, fake_gpu) -> None:
    fake_gpu["cc"] = (7, 5)
    cfg = load_cfg(trt_tree.trt_pkl, trt_tree.trt_root)
    with pytest.raises(ConfigError) as info:
        preflight.check_trt_tree(cfg, _settings())
    msg = str(info.value)
    assert "Ampere_Plus" in msg and "Fake GPU (sm_75)" in msg and "build_engines" in msg


def test_preflight_plugin(trt_tree, fake_gpu, monkeypatch) -> None:
    cfg = load_cfg(trt_tree.trt_pkl, trt_tree.trt_root)
    with pytest.raises(ConfigError, match=r"libgrid_sample_3d_plugin\.so, not found .*--trt_plugin"):
        preflight.check_trt_tree(cfg, _settings())
    onnx_dir = trt_tree.ckpt / "ditto_onnx"
    onnx_dir.mkdir()
    (onnx_dir / tr.PLUGIN_FILE_NAME).write_bytes(b"not a library")
    assert preflight.find_trt_plugin(cfg, _settings()) == onnx_dir / tr.PLUGIN_FILE_NAME
    with pytest.raises(ConfigError, match="cannot load the TensorRT plugin library"):
        preflight.check_trt_tree(cfg, _settings())
    explicit = trt_tree.ckpt / "elsewhere.so"
    assert preflight.plugin_candidates(cfg, _settings(trt_plugin=explicit)) == [explicit]
    with pytest.raises(ConfigError, match="elsewhere.so"):
        preflight.check_trt_tree(cfg, _settings(trt_plugin=explicit))
    # A plugin that loads: the probe deserializes the smallest engine (here: TensorRT's verdict is faked).
    monkeypatch.setattr(preflight, "load_plugin_library", lambda p: None)
    probed = []

    class Probe:
        def __init__(self, path, **kw):
            probed.append((Path(path).name, kw["model"], kw["plugin_paths"]))

    monkeypatch.setattr(preflight, "TensorRTEngine", Probe)
    (trt_tree.trt_root / "stitch_network_fp16.engine").write_bytes(b"")
    preflight.check_trt_tree(cfg, _settings())
    assert probed == [("stitch_network_fp16.engine", "stitch_network", (onnx_dir / tr.PLUGIN_FILE_NAME,))]
    assert preflight.trt_plugin_paths(cfg, _settings()) == (onnx_dir / tr.PLUGIN_FILE_NAME,)


# -- fallback -----------------------------------------------------------------------------------


def test_fallback_to_pytorch_keeps_the_online_options(trt_tree) -> None:
    pytorch_root = trt_tree.ckpt / "ditto_pytorch"
    _touch_tree(pytorch_root, build_cfg_dict("pytorch"))
    root, pkl = preflight.fallback_tree(trt_tree.trt_root, trt_tree.online_pkl)
    assert root == pytorch_root.absolute()
    cfg = load_cfg(pkl, root)
    assert cfg.decoder.engine == "torch" and cfg.wav2feat.engine == "ori"
    assert cfg.setup_options().online_mode and cfg.setup_options().overlap_v2 == 70
    online = read_cfg_dict(trt_tree.online_pkl)
    np.testing.assert_array_equal(cfg.default_kwargs["emo"], online["default_kwargs"]["emo"])
    assert online["base_cfg"]["decoder_cfg"]["model_path"] == "decoder_fp16.engine"  # original untouched


def test_fallback_to_onnx(trt_tree, onnx_twins) -> None:
    (trt_tree.ckpt / "ditto_onnx").symlink_to(onnx_twins, target_is_directory=True)
    root, pkl = preflight.fallback_tree(trt_tree.trt_root, trt_tree.online_pkl)
    cfg = load_cfg(pkl, root)  # every file exists
    assert cfg.decoder.engine == "onnx" and cfg.landmark478.engine == "onnx"
    assert cfg.setup_options().online_mode


def test_fallback_refuses_the_plugin_warp_onnx(trt_tree, tmp_path) -> None:
    import onnx
    from onnx import helper

    onnx_dir = trt_tree.ckpt / "ditto_onnx"
    onnx_dir.mkdir()
    node = helper.make_node("GridSample3D", ["a"], ["b"], domain="custom")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", 1, [1])], [helper.make_tensor_value_info("b", 1, [1])]
    )
    onnx.save(helper.make_model(graph), str(onnx_dir / "warp_network.onnx"))
    with pytest.raises(ConfigError, match="GridSample3D.*ditto_pytorch"):
        preflight.fallback_tree(trt_tree.trt_root, trt_tree.trt_pkl)


def test_fallback_with_nothing_beside(trt_tree) -> None:
    with pytest.raises(ConfigError, match="--fallback: no ditto_pytorch/"):
        preflight.fallback_tree(trt_tree.trt_root, trt_tree.trt_pkl)


def test_load_checked_cfg(trt_tree, no_tensorrt) -> None:
    settings = _settings(data_root=trt_tree.trt_root, cfg_pkl=trt_tree.online_pkl)
    with pytest.raises(ConfigError, match="requirements-trt.txt"):
        preflight.load_checked_cfg(settings)
    _touch_tree(trt_tree.ckpt / "ditto_pytorch", build_cfg_dict("pytorch"))
    cfg = preflight.load_checked_cfg(_settings(data_root=trt_tree.trt_root, cfg_pkl=trt_tree.online_pkl, fallback=True))
    assert cfg.data_root == (trt_tree.ckpt / "ditto_pytorch").absolute() and cfg.decoder.engine == "torch"


# -- end to end: the server refuses engines it cannot run ---------------------------------------


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown when TensorRT is NOT installed")
def test_server_exits_with_one_clear_message(trt_tree) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "streaming_server.py",
            "--data_root",
            str(trt_tree.trt_root),
            "--cfg_pkl",
            str(trt_tree.online_pkl),
            "--port",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("streaming_server.py: error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "tensorrt" in errors[0] and "requirements-trt.txt" in errors[0]
    assert "Traceback" not in out.stderr


# -- engine build plan --------------------------------------------------------------------------


def test_build_plan(onnx_twins, tmp_path) -> None:
    steps = {s.model: s for s in build_engines.plan_builds(onnx_twins, tmp_path, ampere_plus=True)}
    assert set(steps) == {("lmdm_v0.4_hubert" if m == "lmdm" else m) for m in ENGINE_MODELS}
    fp32 = {m for m, s in steps.items() if not s.fp16}
    assert fp32 == {"motion_extractor", "hubert", "lmdm_v0.4_hubert"}
    assert {s.engine.name for s in steps.values()} == set(_engine_names(build_cfg_dict("trt")))
    hubert = steps["hubert"].profiles["input_values"]
    assert (hubert.min, hubert.opt, hubert.max) == ((1, 3240), (1, 6480), (1, 12960))
    assert steps["hubert"].batch is None  # no batch axis in its graph
    batched = {m for m, s in steps.items() if s.batch is not None}
    assert batched == {"stitch_network", "warp_network", "decoder", "lmdm_v0.4_hubert"}
    for m in batched:  # every input of the batched twins: axis 0 over 1..16 (opt 8), the rest static
        official = {t.name: t.shape for t in expected_bindings(model_for_file(f"{m}.onnx")) if t.is_input}
        assert {n: (p.min, p.opt, p.max) for n, p in steps[m].profiles.items()} == {
            n: (shape, (8, *shape[1:]), (16, *shape[1:])) for n, shape in official.items()
        }, m
    lmdm = steps["lmdm_v0.4_hubert"]
    assert lmdm.batch == build_engines.DEFAULT_BATCH == build_engines.BatchRange(1, 8, 16)
    assert set(lmdm.profiles) == {"x", "cond_frame", "cond", "time_cond"}
    assert lmdm.profiles["cond"] == ShapeProfile((1, 80, 1103), (8, 80, 1103), (16, 80, 1103))
    assert lmdm.profiles["time_cond"] == ShapeProfile((1,), (8,), (16,))
    warp = steps["warp_network"].profiles["feature_3d"]
    assert (warp.min, warp.max) == ((1, 32, 16, 64, 64), (16, 32, 16, 64, 64))
    assert "batch 1..16 opt 8; profile kp_source min [1, 21, 3] opt [8, 21, 3] max [16, 21, 3]" in (
        steps["stitch_network"].describe()
    )
    assert all(
        not s.profiles and "batch fixed by the ONNX" in s.describe()
        for m, s in steps.items()
        if m not in batched | {"hubert"}
    )
    small = build_engines.plan_builds(onnx_twins, tmp_path, models=["decoder"], batch=build_engines.BatchRange(2, 4, 8))
    assert small[0].profiles["feature"] == ShapeProfile((2, 256, 64, 64), (4, 256, 64, 64), (8, 256, 64, 64))
    warp = steps["warp_network"]
    assert warp.plugin == onnx_twins / "libgrid_sample_3d_plugin.so" and warp.fp32_layers == "GridSample"
    assert warp.fp16 and all(s.plugin is None for m, s in steps.items() if m != "warp_network")
    assert all(s.ampere_plus and s.opt_level == 5 for s in steps.values())
    only = build_engines.plan_builds(onnx_twins, tmp_path, models=["warp_network"], plugin=tmp_path / "p.so")
    assert [s.model for s in only] == ["warp_network"] and only[0].plugin == tmp_path / "p.so"
    with pytest.raises(ValueError, match="no ONNX file"):
        build_engines.plan_builds(onnx_twins, tmp_path, models=["nope"])


def test_build_plan_skips_warp_network_ori(tmp_path) -> None:
    for name in ("warp_network", "warp_network_ori", "wavlm"):
        (tmp_path / f"{name}.onnx").write_bytes(b"")
    steps = build_engines.plan_builds(tmp_path, tmp_path / "out")
    assert [(s.model, s.precision) for s in steps] == [("warp_network", "fp16"), ("wavlm", "fp32")]


def test_plan_profiles_and_batch_range() -> None:
    batch = build_engines.DEFAULT_BATCH
    hubert = SHAPE_PROFILES["hubert"]["input_values"]
    assert build_engines.plan_profiles("hubert", {"input_values": (1, -1)}, batch) == ({"input_values": hubert}, None)
    # A HuBERT exported with a batch axis keeps its length range and gets the batch range.
    profiles, got = build_engines.plan_profiles("hubert", {"input_values": (-1, -1)}, batch)
    assert got == batch and profiles == {"input_values": ShapeProfile((1, 3240), (8, 6480), (16, 12960))}
    assert build_engines.plan_profiles("hubert", {"input_values": (1, 6480)}, batch) == ({}, None)  # static file
    with pytest.raises(ValueError, match="dynamic axis after the batch axis"):
        build_engines.plan_profiles("decoder", {"feature": (-1, 256, -1, 64)}, batch)
    assert build_engines.BatchRange.parse("1,8,16") == batch and str(batch) == "1,8,16"
    assert build_engines.BatchRange.parse("4") == build_engines.BatchRange(4, 4, 4)
    for bad in ("8,4,16", "0,1,2", "1,2", "a,b,c"):
        with pytest.raises(ValueError):
            build_engines.BatchRange.parse(bad)


def test_build_engines_cli_batch(onnx_twins, tmp_path, capsys) -> None:
    args = ["--onnx_dir", str(onnx_twins), "--out_dir", str(tmp_path), "--dry_run", "--hardware_compat", "none"]
    assert build_engines.main([*args, "--models", "stitch_network", "hubert", "--batch", "2,4,8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "batch 2..8 opt 4; profile kp_source min [2, 21, 3] opt [4, 21, 3] max [8, 21, 3]" in lines[0]
    assert "batch fixed by the ONNX; profile input_values min [1, 3240]" in lines[1]
    with pytest.raises(SystemExit):
        build_engines.main([*args, "--batch", "16,8,1"])
    assert "--batch: batch range needs 1 <= min <= opt <= max" in capsys.readouterr().err


def test_build_engines_cli(onnx_twins, tmp_path) -> None:
    help_ = subprocess.run(
        [sys.executable, "-m", "ditto.tools.build_engines", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_.returncode == 0 and "--onnx_dir" in help_.stdout and "--out_dir" in help_.stdout
    assert (
        build_engines.main(
            ["--onnx_dir", str(onnx_twins), "--out_dir", str(tmp_path), "--dry_run", "--hardware_compat", "none"]
        )
        == 0
    )
    assert build_engines.main(["--onnx_dir", str(tmp_path / "nope"), "--out_dir", str(tmp_path)]) == 2


class _Recorder:
    """Stands in for every TensorRT builder object and records what is set on it."""

    def __init__(self, log, name):
        self.__dict__.update(_log=log, _name=name)

    def __getattr__(self, attr):
        return _Recorder(self._log, f"{self._name}.{attr}")

    def __setattr__(self, attr, value):
        self._log.append((f"{self._name}.{attr}", value))

    def __call__(self, *args, **kwargs):
        self._log.append((self._name, args))
        return _Recorder(self._log, f"{self._name}()")


def test_build_engine_sets_the_official_options(tmp_path) -> None:
    """The builder calls for the warp network, on a recording double of the TensorRT 8.6 API."""
    log: list = []
    layers = [
        SimpleNamespace(name="/dense_motion/GridSample_3", type="LayerType.PLUGIN_V2", precision=None),
        SimpleNamespace(name="/GridSample_shape", type="LayerType.SHAPE", precision=None),
        SimpleNamespace(name="/conv", type="LayerType.CONVOLUTION", precision=None),
    ]
    network = SimpleNamespace(num_layers=len(layers), get_layer=lambda i: layers[i])
    config = _Recorder(log, "config")
    profile = _Recorder(log, "profile")
    builder = SimpleNamespace(
        get_plugin_registry=lambda: SimpleNamespace(load_library=lambda p: log.append(("load_library", p))),
        create_network=lambda flags: log.append(("create_network", flags)) or network,
        create_builder_config=lambda: config,
        create_optimization_profile=lambda: profile,
        build_serialized_network=lambda n, c: b"plan",
    )
    trt = SimpleNamespace(
        __version__="8.6.1",
        Builder=lambda _l: builder,
        float32="fp32",
        NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0),
        OnnxParser=lambda n, _l: SimpleNamespace(parse_from_file=lambda p: True),
        HardwareCompatibilityLevel=SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS"),
        BuilderFlag=SimpleNamespace(FP16="FP16", PREFER_PRECISION_CONSTRAINTS="PREFER"),
        PreviewFeature=SimpleNamespace(PROFILE_SHARING_0806="PS0806"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WS"),
    )
    plugin = tmp_path / "libgrid_sample_3d_plugin.so"
    plugin.write_bytes(b"")
    (tmp_path / "warp_network.onnx").write_bytes(b"")
    (step,) = build_engines.plan_builds(tmp_path, tmp_path / "out", ampere_plus=True)
    assert build_engines.build_engine(step, trt, None) == b"plan"
    assert ("load_library", str(plugin)) in log and ("create_network", 1) in log
    assert ("config.builder_optimization_level", 5) in log
    assert ("config.hardware_compatibility_level", "AMPERE_PLUS") in log
    assert ("config.set_flag", ("FP16",)) in log and ("config.set_flag", ("PREFER",)) in log
    assert ("config.plugins_to_serialize", [str(plugin)]) in log
    assert [layer.precision for layer in layers] == ["fp32", None, None]

    log.clear()
    specs = {t.name: t.shape for t in expected_bindings("stitch_network", dynamic_batch=True) if t.is_input}
    profiles, batch = build_engines.plan_profiles("stitch_network", specs, build_engines.DEFAULT_BATCH)
    stitch = build_engines.BuildStep(
        "stitch_network", tmp_path / "s.onnx", tmp_path / "s.engine", True, profiles=profiles, batch=batch
    )
    build_engines.build_engine(stitch, trt, None)
    assert ("profile.set_shape", ("kp_driving", (1, 21, 3), (8, 21, 3), (16, 21, 3))) in log
    assert ("config.set_preview_feature", ("PS0806", True)) in log  # one profile, shareable by several contexts

    log.clear()
    (tmp_path / "hubert.onnx").write_bytes(b"")
    step = next(s for s in build_engines.plan_builds(tmp_path, tmp_path / "out") if s.model == "hubert")
    trt.__version__ = "10.3.0"
    build_engines.build_engine(step, trt, None, workspace_bytes=1 << 30)
    assert ("create_network", 0) in log and ("config.set_memory_pool_limit", ("WS", 1 << 30)) in log
    assert ("profile.set_shape", ("input_values", (1, 3240), (1, 6480), (1, 12960))) in log
    assert not any(k == "config.set_flag" for k, _ in log)  # fp32
    assert not any(k == "config.hardware_compatibility_level" for k, _ in log)


# -- with TensorRT ------------------------------------------------------------------------------


@pytest.mark.gpu
@NEEDS_TRT
def test_built_stitch_engine_matches_onnxruntime(onnx_twins, tmp_path) -> None:
    import tensorrt as trt

    from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner

    step = next(s for s in build_engines.plan_builds(onnx_twins, tmp_path, models=["stitch_network"]))
    step = build_engines.BuildStep(**{**{f: getattr(step, f) for f in step.__dataclass_fields__}, "fp16": False})
    trt_logger = trt.Logger(trt.Logger.WARNING)
    step.engine.write_bytes(build_engines.build_engine(step, trt, trt_logger))
    runner = tr.TensorRTRunner(step.engine, device="cuda")
    assert binding_problems("stitch_network", runner.engine.specs) == []
    inputs = {"kp_source": torch.randn(1, 21, 3), "kp_driving": torch.randn(1, 21, 3)}
    got = runner(**{k: v.cuda() for k, v in inputs.items()})["out"].cpu()
    ref = OnnxRunner(onnx_twins / "stitch_network.onnx")(**inputs)["out"]
    assert torch.allclose(got, ref, atol=1e-4)


def test_the_device_engine_is_the_one_caller_of_an_engine(pytorch_backend) -> None:
    """Sessions never call a TensorRT engine themselves: the device engine runs every session's
    windows through the runner's one execution context."""
    import dataclasses

    from ditto.backends.talkinghead.engine import WindowWork

    engine, contexts = _fake_engine("tensors")
    models = dataclasses.replace(pytorch_backend.models, lmdm=tr.TensorRTRunner(engine=engine))
    try:
        g = torch.Generator().manual_seed(0)
        work = WindowWork(
            steps=2,
            kp_cond=torch.zeros(1, 265),
            cond=torch.zeros(1, 80, 1103),
            x_T=torch.randn(1, 80, 265, generator=g),
            noise=torch.randn(1, 1, 80, 265, generator=g),
        )
        with models.engine.paused():
            futures = [models.engine.sample(work, deadline=0.0) for _ in range(3)]
        assert all(f.result(timeout=60).shape == (80, 265) for f in futures)
        assert len(contexts) == 1
    finally:
        models.engine.close()

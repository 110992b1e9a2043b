"""Runners and the loader: suffix dispatch, name mapping, checkpoint layouts, engine errors."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from ditto.backends.talkinghead.models.lmdm import MotionDecoder
from ditto.backends.talkinghead.runtime.base import leading_batch_limit, run_in_batches
from ditto.backends.talkinghead.runtime.loader import MODEL_IO, load_runner, read_torch_state_dict
from ditto.backends.talkinghead.runtime.onnx_runner import OnnxRunner
from ditto.backends.talkinghead.runtime.torch_runner import TorchRunner
from ditto.errors import ConfigError
from ditto.tools.onnx_export import export_lmdm_onnx

LMDM_NAMES = ("x", "cond_frame", "cond", "time_cond")


def _small_lmdm() -> MotionDecoder:
    torch.manual_seed(0)
    return MotionDecoder(latent_dim=64, ff_size=128, num_layers=2).eval()


def _lmdm_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return {
        "x": torch.randn(1, 80, 265, generator=g),
        "cond_frame": torch.randn(1, 265, generator=g),
        "cond": torch.randn(1, 80, 1103, generator=g),
        "time_cond": torch.tensor([899], dtype=torch.int64),
    }


@pytest.fixture(scope="module")
def lmdm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmdm")
    model = _small_lmdm()
    pth = root / "lmdm_v0.4_hubert.pth"
    torch.save({"model_state_dict": model.state_dict()}, pth)
    onnx_path = root / "lmdm_v0.4_hubert.onnx"
    export_lmdm_onnx(model, onnx_path)
    return model, pth, onnx_path


def test_torch_runner_maps_names(lmdm_files) -> None:
    model, pth, _ = lmdm_files
    runner = load_runner("lmdm", pth, device="cpu")  # default LMDM factory reads dims off the state dict
    assert isinstance(runner, TorchRunner)
    assert runner.input_names == LMDM_NAMES and runner.output_names == ("pred_noise", "x_start")
    ins = _lmdm_inputs()
    out = runner(**ins)
    with torch.inference_mode():
        ref_noise, ref_x0 = model(*(ins[n] for n in LMDM_NAMES))
    assert set(out) == {"pred_noise", "x_start"}
    assert torch.equal(out["x_start"], ref_x0) and torch.equal(out["pred_noise"], ref_noise)
    assert not runner.module.training
    with pytest.raises(TypeError, match="cond_frame"):
        runner(x=ins["x"])


def test_onnx_runner_matches_torch_on_cpu(lmdm_files) -> None:
    model, _, onnx_path = lmdm_files
    runner = load_runner("lmdm", onnx_path, device="cpu")
    assert isinstance(runner, OnnxRunner)
    assert runner.input_names == LMDM_NAMES and runner.output_names == ("pred_noise", "x_start")
    ins = _lmdm_inputs()
    ins32 = dict(ins, time_cond=ins["time_cond"].to(torch.int32))  # cast to the model's int64
    out = runner(**ins32)
    with torch.inference_mode():
        ref_noise, ref_x0 = model(*(ins[n] for n in LMDM_NAMES))
    assert out["x_start"].dtype == torch.float32 and out["x_start"].device.type == "cpu"
    torch.testing.assert_close(out["x_start"], ref_x0, rtol=0, atol=1e-4)
    torch.testing.assert_close(out["pred_noise"], ref_noise, rtol=0, atol=1e-3)
    with pytest.raises(TypeError):
        runner(**ins, extra=ins["x"])


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, a, b):
        return self.lin(a), a + b


class _DictNet(_TupleNet):
    def forward(self, a, b):
        return {"second": a + b, "first": self.lin(a)}


def _lmdm_batch(b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {
        "x": torch.randn(b, 80, 265, generator=g),
        "cond_frame": torch.randn(b, 265, generator=g),
        "cond": torch.randn(b, 80, 1103, generator=g),
        "time_cond": torch.tensor([899, 499, 99][:b]),
    }


def test_onnx_runner_fixed_and_dynamic_batch(lmdm_files, tmp_path, monkeypatch) -> None:
    """A batch-1 model runs B rows as B runs; a model with a dynamic batch axis runs them in one."""
    model, _, fixed_path = lmdm_files
    dynamic_path = tmp_path / "lmdm_dynamic.onnx"
    export_lmdm_onnx(model, dynamic_path, dynamic_batch=True)
    fixed, dynamic = OnnxRunner(fixed_path), OnnxRunner(dynamic_path)
    assert fixed.max_batch == 1 and dynamic.max_batch is None
    assert dynamic.input_names == fixed.input_names and dynamic.output_names == fixed.output_names
    runs = {"fixed": 0, "dynamic": 0}
    for key, runner in (("fixed", fixed), ("dynamic", dynamic)):
        real = runner.session.run

        def counting(*args, _real=real, _key=key, **kwargs):
            runs[_key] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(runner.session, "run", counting)
    ins = _lmdm_batch(3)
    got_fixed, got_dynamic = fixed(**ins), dynamic(**ins)
    assert runs == {"fixed": 3, "dynamic": 1}
    with torch.inference_mode():
        ref_noise, ref_x0 = model(*(ins[n] for n in LMDM_NAMES))
    for got in (got_fixed, got_dynamic):
        assert got["x_start"].shape == got["pred_noise"].shape == (3, 80, 265)
        torch.testing.assert_close(got["x_start"], ref_x0, rtol=0, atol=1e-4)
        torch.testing.assert_close(got["pred_noise"], ref_noise, rtol=0, atol=1e-3)
    rows = [fixed(**{k: v[i : i + 1] for k, v in ins.items()}) for i in range(3)]
    assert torch.equal(got_fixed["x_start"], torch.cat([r["x_start"] for r in rows]))
    with pytest.raises(ValueError, match="do not share a leading batch axis"):
        fixed(**{**ins, "time_cond": ins["time_cond"][:1]})


def test_run_in_batches() -> None:
    calls: list[int] = []

    def run(inputs):
        calls.append(int(inputs["a"].shape[0]))
        return {"sum": inputs["a"] + inputs["b"], "first": inputs["a"][:, :1]}

    a, b = torch.arange(10.0).reshape(5, 2), torch.ones(5, 2)
    out = run_in_batches(run, {"a": a, "b": b}, max_batch=2)
    assert calls == [2, 2, 1]
    assert torch.equal(out["sum"], a + b) and torch.equal(out["first"], a[:, :1])
    calls.clear()
    run_in_batches(run, {"a": a, "b": b}, max_batch=None)
    run_in_batches(run, {"a": a, "b": b}, max_batch=5)
    assert calls == [5, 5]  # no limit, or within it: one call
    assert leading_batch_limit({"a": 1, "b": None}) == 1 and leading_batch_limit({"a": None}) is None


def test_torch_runner_output_forms() -> None:
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    for net in (_TupleNet(), _DictNet()):
        r = TorchRunner(net, ("a", "b"), ("first", "second"))
        out = r(b=b, a=a)  # keyword order does not matter
        torch.testing.assert_close(out["second"], a + b)
        torch.testing.assert_close(out["first"], net.lin(a))
    with pytest.raises(RuntimeError, match="2 outputs"):
        TorchRunner(_TupleNet(), ("a", "b"), ("only",))(a=a, b=b)
    with pytest.raises(RuntimeError, match="lacks"):
        TorchRunner(_DictNet(), ("a", "b"), ("first", "third"))(a=a, b=b)
    r = TorchRunner(_TupleNet(), ("a", "b"), ("x", "y"), autocast_fp16=True)
    assert r.autocast_fp16 is False  # autocast only on CUDA
    assert r.max_batch is None  # the module takes the whole batch in one call


def test_model_io_table() -> None:
    assert MODEL_IO["warp_network"].input_names == ("feature_3d", "kp_source", "kp_driving")
    assert MODEL_IO["motion_extractor"].output_names == ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")
    assert MODEL_IO["decoder"].autocast_fp16 and not MODEL_IO["lmdm"].autocast_fp16
    assert not MODEL_IO["stitch_network"].autocast_fp16


class _Stitch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(126, 4), nn.ReLU(), nn.Linear(4, 65))

    def forward(self, kp_source, kp_driving):
        return kp_driving


def test_stitch_checkpoint_layout_and_factory(tmp_path) -> None:
    net = _Stitch()
    path = tmp_path / "stitch_network.pth"
    torch.save({"retarget_shoulder": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    sd = read_torch_state_dict(path, "stitch_network")
    assert set(sd) == set(net.state_dict())
    seen = {}

    def factory(state_dict):
        seen["keys"] = set(state_dict)
        return _Stitch()

    runner = load_runner("stitch_network", path, module_factory=factory)
    assert seen["keys"] == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(runner.module.state_dict()[k], v)
    kp = torch.randn(1, 21, 3)
    assert torch.equal(runner(kp_source=kp, kp_driving=kp * 2)["out"], kp * 2)


def test_loader_errors(tmp_path, lmdm_files) -> None:
    _, pth, _ = lmdm_files
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="m.bin"):
        load_runner("decoder", tmp_path / "m.bin")
    with pytest.raises(ConfigError, match="decoder.onnx"):
        load_runner("decoder", tmp_path / "decoder.onnx")  # missing file
    with pytest.raises(ConfigError, match="factory"):
        load_runner("decoder", pth)  # torch engine, no factory for this kind
    with pytest.raises(ConfigError, match="does not match"):
        load_runner("lmdm", pth, module_factory=lambda sd: MotionDecoder(latent_dim=32, ff_size=64, num_layers=1))
    with pytest.raises(ConfigError, match="io_names"):
        load_runner("mystery", pth, module_factory=lambda sd: nn.Linear(1, 1))
    plain = tmp_path / "plain.pth"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(ConfigError, match="model_state_dict"):
        read_torch_state_dict(plain, "lmdm")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(ConfigError, match="junk.onnx"):
        load_runner("decoder", junk)


def test_tensorrt_missing_is_a_config_error(tmp_path, monkeypatch) -> None:
    engine = tmp_path / "decoder_fp16.engine"
    engine.write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    with pytest.raises(ConfigError, match="tensorrt"):
        load_runner("decoder", engine, device="cuda")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_onnx_runner_io_binding_on_cuda(lmdm_files) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDA provider")
    model, _, onnx_path = lmdm_files
    runner = load_runner("lmdm", onnx_path, device="cuda")
    ins = {k: v.cuda() for k, v in _lmdm_inputs().items()}
    out = runner(**ins)
    assert out["x_start"].is_cuda
    with torch.inference_mode():
        ref = model.cuda()(*(ins[n] for n in LMDM_NAMES))[1]
    model.cpu()
    torch.testing.assert_close(out["x_start"], ref, rtol=0, atol=1e-3)


@pytest.mark.gpu
@cuda
def test_torch_runner_fp16_autocast_returns_float32() -> None:
    runner = TorchRunner(_TupleNet(), ("a", "b"), ("x", "y"), device="cuda", autocast_fp16=True)
    out = runner(a=torch.randn(2, 3, device="cuda"), b=torch.randn(2, 3, device="cuda"))
    assert out["x"].dtype == torch.float32 and out["x"].is_cuda


def test_padded_batch_size_is_the_smallest_graph_that_holds_the_rows() -> None:
    from ditto.backends.talkinghead.runtime.base import padded_batch_size

    sizes = (1, 2, 4, 8, 16)
    assert [padded_batch_size(n, sizes) for n in (1, 2, 3, 5, 9, 16, 40)] == [1, 2, 4, 8, 16, 16, 16]
    assert padded_batch_size(7, (1,)) == 1


def test_batch_sizes_add_halfway_sizes_from_8_on() -> None:
    from ditto.backends.talkinghead.runtime.base import batch_sizes_up_to

    assert batch_sizes_up_to(16) == (1, 2, 4, 8, 12, 16)
    assert batch_sizes_up_to(32) == (1, 2, 4, 8, 12, 16, 24, 32)
    assert batch_sizes_up_to(10) == (1, 2, 4, 8, 10) and batch_sizes_up_to(1) == (1,)

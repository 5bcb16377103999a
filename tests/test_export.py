"""Export and acceleration: ONNX export of both generator kinds, INT8 on real crops, tools/export_trt.py,
the TensorRT backend (GPU tests, skipped without CUDA)."""

import json

import numpy as np
import pytest
import torch

from conftest import data_file, wav2lip_file
from engine import backends
from engine.backends import BackendError, example_inputs, max_diff
from engine.backends.onnx_backend import OnnxBackend
from engine.backends.onnx_export import export_onnx
from engine.backends.tensorrt_backend import check_build, unavailable_reason
from engine.models import load as load_generator
from engine.models.generator import save_generator
from engine.models.generator import Generator, GeneratorConfig
from tools import export_trt


def _small(size: int, decoder: str = "plain") -> Generator:
    """A random width-1/8 generator with non-trivial BatchNorm statistics."""
    torch.manual_seed(size)
    g = Generator(GeneratorConfig(size=size, width=0.125, decoder=decoder)).train()
    with torch.no_grad():
        g(torch.rand(4, 6, size, size), torch.rand(4, 1, 80, 16) * 8 - 4)
    return g.eval()


def _onnx_vs_torch(model, path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["faces", "mels"]
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    worst = 0.0
    for n in (1, 5):
        faces, mels = example_inputs(n, model.info.size, seed=n, mel_frames=model.info.mel_frames)
        got = session.run(["frames"], {"faces": faces, "mels": mels})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(faces), torch.from_numpy(mels)).numpy()
        assert got.shape == (n, 3, model.info.size, model.info.size)
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


@pytest.mark.parametrize("size,decoder", [(96, "plain"), (128, "plain"), (96, "warp")])
def test_onnx_export_of_our_generator_matches_pytorch(tmp_path, size, decoder):
    import onnx

    g = _small(size, decoder)
    if decoder == "warp":  # a flow that moves pixels, so that the exported grid_sample is exercised
        torch.nn.init.normal_(g.flow_head.weight, std=0.05)
        torch.nn.init.normal_(g.blend_head.weight, std=0.05)
    path = export_onnx(g, tmp_path / "g.onnx")
    assert onnx.load(str(path)).opset_import[0].version >= 17
    assert _onnx_vs_torch(g, path) < 1e-4


def test_onnx_export_of_wav2lip_matches_pytorch(tmp_path):
    _, ckpt = wav2lip_file(tmp_path)
    g = load_generator(ckpt)  # RGB adapter around the published BGR network: the flip is in the graph
    assert _onnx_vs_torch(g, export_onnx(g, tmp_path / "w2l.onnx")) < 1e-4


def test_fp16_export_for_tensorrt_keeps_float32_io(tmp_path, small_generator):
    import onnx

    path = export_onnx(small_generator, tmp_path / "g16.onnx", fp16=True)
    m = onnx.load(str(path))
    assert {i.type.tensor_type.elem_type for i in [*m.graph.input, *m.graph.output]} == {onnx.TensorProto.FLOAT}
    assert {t.data_type for t in m.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert max_diff(OnnxBackend(onnx_path=path, info=small_generator.info), small_generator) < 1e-2


def test_int8_runs_and_its_cost_on_a_real_clip(small_generator):
    from engine.backends import quantize

    video = data_file("video/grid_bbaf2n.mpg")
    f32 = backends.load(small_generator, "onnxruntime")
    i8 = backends.load(small_generator, "onnxruntime", int8=True)  # calibrated on the bundled demo face
    assert i8.name == "onnxruntime-int8" and i8.path.name.endswith(".int8.onnx")
    batches = quantize.calibration_batches(small_generator.info, video, chunks=3)
    assert batches[0][0].shape == (5, 6, 96, 96) and batches[0][1].shape == (5, 1, 80, 16)
    q = quantize.quality(f32, i8, batches)
    print(f"\nINT8 vs float32 on grid_bbaf2n (random width-1/8 model, 15 faces): "
          f"SSIM {q['ssim']:.4f}, PSNR {q['psnr']:.1f} dB, max |diff| {q['max_diff']:.3f}")
    assert q["ssim"] > 0.9 and q["psnr"] > 30
    with pytest.raises(ValueError, match="INT8"):
        backends.load(small_generator, "torch", int8=True)


def test_cli_passes_int8_to_the_backend(tmp_path, small_checkpoint, capsys):
    from realtime.cli import main

    argv = ["run", "--video", str(data_file("video/grid_bbaf2n.mpg")),
            "--audio", str(data_file("audio/librivox_ss01_0870.wav")), "--out", str(tmp_path / "o.mp4"),
            "--checkpoint", str(small_checkpoint), "-q", "--int8"]
    assert main(argv + ["--backend", "torch"]) == 2  # refused before anything runs
    assert "INT8 is an ONNX Runtime option" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()


def test_export_trt_without_tensorrt_writes_onnx_and_fails_clearly(tmp_path, small_checkpoint, capsys):
    if unavailable_reason() is None:
        pytest.skip(reason="TensorRT and a GPU are here: export_trt.py builds instead (see the gpu tests)")
    out = tmp_path / "build"
    rc = export_trt.main(["--checkpoint", str(small_checkpoint), "--out", str(out), "--fp16", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == export_trt.EXIT_NO_TENSORRT
    assert len(err) == 1 and err[0].startswith("export_trt: no engine built: ") and str(out) in err[0]
    assert (out / "generator.onnx").is_file() and (out / "generator.fp16.onnx").is_file()
    meta = json.loads((out / "generator.json").read_text())
    assert meta["engine"] is None and meta["onnx_max_diff"] < 1e-4 and meta["info"]["size"] == 96
    # the build folder is refused by the tensorrt backend with the reason, and auto still works
    with pytest.raises(BackendError, match="TensorRT|GPU"):
        backends.load(out, "tensorrt")
    assert backends.load(small_checkpoint).name == "onnxruntime"
    # bad input: one line, status 2
    assert export_trt.main(["--checkpoint", str(small_checkpoint), "--size", "128", "-q"]) == 2
    assert "not --size 128" in capsys.readouterr().err


def test_build_check_against_the_running_gpu():
    meta = {"tensorrt": "10.3.0", "gpu": "NVIDIA L4", "compute_capability": "8.9", "precision": "fp16",
            "checkpoint": "g.pt"}
    assert check_build(meta, {"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "10.3.0") == ([], [])
    errors, _ = check_build(meta, {"gpu": "NVIDIA L4", "compute_capability": "8.9"}, "10.7.0")
    assert "TensorRT 10.3.0" in errors[0] and "export_trt.py --checkpoint g.pt" in errors[0]
    errors, _ = check_build(meta, {"gpu": "NVIDIA A100", "compute_capability": "8.0"}, "10.3.0")
    assert "rebuild" in errors[0]
    errors, warnings = check_build(meta, {"gpu": "NVIDIA RTX 4090", "compute_capability": "8.9"}, "10.3.0")
    assert not errors and "RTX 4090" in warnings[0]


def test_available_says_why_tensorrt_is_not_usable():
    why = backends.available()["tensorrt"]
    assert why is None or "TensorRT" in why or "GPU" in why


# -- on an NVIDIA GPU with TensorRT -------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("via", ["tensorrt", "torch-tensorrt"])
def test_tensorrt_fp16_engine_matches_pytorch(tmp_path, small_generator, via):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt)")
    if via == "torch-tensorrt":
        pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed")
    ckpt = tmp_path / "g.pt"
    save_generator(small_generator, ckpt)
    out = tmp_path / "build"
    assert export_trt.main(["--checkpoint", str(ckpt), "--out", str(out), "--fp16", "--via", via, "-q"]) == 0
    meta = json.loads((out / "generator.json").read_text())
    assert meta["precision"] == "fp16" and meta["gpu"] == torch.cuda.get_device_name()
    trt = backends.load(out, "tensorrt")
    assert trt.name == "tensorrt" and trt.info == small_generator.info
    model = load_generator(ckpt).cuda()
    torch.backends.cudnn.allow_tf32 = False
    for n in (1, 5, 8, 11):  # 11 > max batch: run in two pieces
        faces, mels = example_inputs(n, 96, seed=n)
        out_trt = trt.run(faces, mels)
        with torch.no_grad():
            ref = model(torch.from_numpy(faces).cuda(), torch.from_numpy(mels).cuda()).cpu().numpy()
        assert out_trt.shape == ref.shape and np.abs(out_trt - ref).max() < 2e-2
    # auto prefers the engine when it sits where export_trt puts it by default
    assert export_trt.main(["--checkpoint", str(ckpt), "--fp16", "--via", via, "-q"]) == 0
    assert backends.load(ckpt).name == "tensorrt"


def test_onnx_export_of_a_generator_with_past_audio_matches_pytorch(tmp_path):
    """lip_context: the exported model takes the wider mel input [N, 1, 80, 35] and gives torch's frames."""
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True,
                                  lip_predictor="resting", lip_context=3)).eval()
    torch.nn.init.normal_(g.lip_delta[-1].weight, std=0.05)  # predicted lips that move with the audio
    path = export_onnx(g, tmp_path / "g.onnx")
    assert _onnx_vs_torch(g, path) < 1e-4

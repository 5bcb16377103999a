"""Export a generator to ONNX and build a TensorRT engine for it.

    python tools/export_trt.py --checkpoint generator.pt --fp16
    python tools/export_trt.py --checkpoint wav2lip_gan.pth --out engines/w2l --fp16 --max-batch 8
    python tools/export_trt.py --checkpoint generator.pt --int8-calib ../shared/data/video
    python tools/export_trt.py --checkpoint generator.pt --onnx-only
    python tools/export_trt.py --checkpoint generator.pt --fp16 --via torch-tensorrt

Steps, each logged:

1. load the checkpoint (ours or Wav2Lip's);
2. export it to ONNX (opset 17, inputs ``faces [N,6,S,S]`` / ``mels
   [N,1,80,16]``, output ``frames``, dynamic batch) as ``generator.onnx``
   and check it against PyTorch in ONNX Runtime (batches 1, 5, max);
3. ``--fp16``: also export ``generator.fp16.onnx`` (float16 inside, float32
   in and out), which a strongly typed TensorRT network builds as an FP16
   engine; ``--int8-calib DATA``: write ``generator.int8.onnx`` (symmetric
   QDQ, calibrated on face crops and speech of the videos in DATA) and
   measure its SSIM/PSNR against float32 on those crops;
4. write ``generator.json`` (what was exported; see
   ``engine/backends/tensorrt_backend.py``);
5. build the engine: the TensorRT Python API (strongly typed network, one
   optimisation profile for batch 1..max with the chunk size k=5 as its
   optimum, a timing cache ``timing.cache`` reused by later builds) →
   ``generator.engine``; or ``--via torch-tensorrt`` → ``generator.ep``;
6. load the engine as the ``tensorrt`` backend, measure its largest
   difference to PyTorch float32 on the GPU, and record it, the TensorRT
   version and the GPU in ``generator.json``.

The default output folder is where ``realtime --backend auto|tensorrt``
looks for the model's engine: ``$DUBCAM_HOME/engines/<weights hash>``.

Exit status: 0 done; 2 bad input or a failed export/build; 3 TensorRT or a
GPU is missing here (steps 1–4 were done: the ONNX files and their JSON are
written; run again on the GPU machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.backends import BackendError, max_diff  # noqa: E402
from engine.backends.onnx_backend import OnnxBackend  # noqa: E402
from engine.backends.onnx_export import HalfPrecision, export_onnx, weights_hash  # noqa: E402
from engine.backends.tensorrt_backend import (BUILD_FORMAT, BUILD_JSON, TensorRTBackend,  # noqa: E402
                                              engine_dir, running_gpu, unavailable_reason)

log = logging.getLogger("export_trt")
EXIT_NO_TENSORRT = 3
ONNX_TOLERANCE = 1e-3  # float32 exports agree to ~1e-6; more means a broken export
ENGINE_WARN_DIFF = 0.05  # FP16 engines agree to ~1e-3..1e-2 in [0, 1] units
VIDEO_SUFFIXES = {".mp4", ".mpg", ".mov", ".webm", ".mkv", ".avi"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/export_trt.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="generator weights: a dubcam generator.pt or Wav2Lip's wav2lip.pth / wav2lip_gan.pth")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: $DUBCAM_HOME/engines/<weights hash>, where the realtime "
                        "command finds it)")
    p.add_argument("--size", type=int, default=None,
                   help="face size S the checkpoint must have (default: the checkpoint's own)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="FP16 engine (default: FP32, TF32 allowed)")
    prec.add_argument("--int8-calib", type=Path, metavar="DATA",
                      help="INT8 engine calibrated on DATA: a video with a face and speech, or a folder of them "
                           "(up to 8 videos, 40 frames each)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="largest chunk the engine takes; the profile is 1..MAX with optimum min(5, MAX) (default: 8)")
    p.add_argument("--onnx-only", action="store_true", help="stop after the ONNX export and its check")
    p.add_argument("--via", choices=("tensorrt", "torch-tensorrt"), default="tensorrt",
                   help="build with the TensorRT Python API (default) or compile with torch-tensorrt")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="TensorRT builder workspace limit (default: 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    return p


def calibration_videos(data: Path) -> list[Path]:
    """The videos to calibrate INT8 on: ``data`` itself, or up to 8 videos in the folder ``data``."""
    if data.is_file():
        return [data]
    if not data.is_dir():
        raise FileNotFoundError(f"no such calibration file or folder: {data}")
    videos = sorted(p for p in data.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)[:8]
    if not videos:
        raise FileNotFoundError(f"no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {data}")
    return videos


def build_tensorrt(onnx_path: Path, engine_path: Path, size: int, max_batch: int, opt_batch: int,
                   timing_cache: Path, workspace_gib: float, mel_frames: int = 16) -> None:
    """Build a serialized engine from an ONNX file with the TensorRT (≥ 10) Python API.

    Strongly typed network (precision comes from the ONNX file: float32,
    float16 or Q/DQ INT8), one optimisation profile for faces/mels with
    batch 1..``max_batch`` tuned for ``opt_batch``, and a timing cache read
    from and written back to ``timing_cache``. Raises BackendError when
    parsing or building fails.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, shape in (("faces", (6, size, size)), ("mels", (1, 80, mel_frames))):
        profile.set_shape(name, (1, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    log.info("building the TensorRT engine from %s (batch 1..%d, optimum %d); this takes minutes the first "
             "time, less with the timing cache", onnx_path.name, max_batch, opt_batch)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError("TensorRT failed to build the engine (see its log above)")
    _write_atomic(engine_path, plan)
    _write_atomic(timing_cache, config.get_timing_cache().serialize())


def build_torch_tensorrt(model: torch.nn.Module, path: Path, fp16: bool, max_batch: int, opt_batch: int,
                         timing_cache: Path) -> None:
    """Compile with torch-tensorrt (dynamo, dynamic batch 1..max) and save an ExportedProgram to ``path``."""
    import torch_tensorrt

    from engine.backends import example_inputs

    size = model.info.size
    module = (HalfPrecision(model) if fp16 else model).eval().cuda()
    example = tuple(torch.from_numpy(a).cuda() for a in example_inputs(opt_batch, size,
                                                                       mel_frames=model.info.mel_frames))
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dynamic = {"faces": {0: batch}, "mels": {0: batch}}
    program = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)
    inputs = [torch_tensorrt.Input(min_shape=(1, *shape), opt_shape=(opt_batch, *shape),
                                   max_shape=(max_batch, *shape), dtype=torch.float32)
              for shape in ((6, size, size), (1, 80, model.info.mel_frames))]
    log.info("compiling with torch-tensorrt %s (batch 1..%d, optimum %d)", torch_tensorrt.__version__,
             max_batch, opt_batch)
    compiled = torch_tensorrt.dynamo.compile(program, inputs=inputs, min_block_size=1,
                                             timing_cache_path=str(timing_cache))
    tmp = path.with_name(path.name + ".tmp")
    torch_tensorrt.save(compiled, str(tmp), output_format="exported_program", arg_inputs=list(example),
                        dynamic_shapes=dynamic)
    os.replace(tmp, path)


def _write_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, meta: dict) -> None:
    _write_atomic(path, (json.dumps(meta, indent=2) + "\n").encode())
    log.info("wrote %s", path)


def export(args) -> int:
    from engine.models import load as load_model

    if args.max_batch < 1:
        raise ValueError("--max-batch must be at least 1")
    if args.int8_calib is not None and args.via == "torch-tensorrt":
        raise ValueError("--int8-calib builds through the TensorRT API; drop --via torch-tensorrt")
    t0 = time.perf_counter()
    model = load_model(args.checkpoint)
    info = model.info
    if args.size is not None and args.size != info.size:
        raise ValueError(f"{args.checkpoint} works on {info.size}px faces, not --size {args.size}")
    out = args.out or engine_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    opt_batch = min(5, args.max_batch)
    batches = tuple(sorted({1, opt_batch, args.max_batch}))
    log.info("loaded %s: %s generator, %d px faces, %.1f M parameters", args.checkpoint, info.kind, info.size,
             sum(p.numel() for p in model.parameters()) / 1e6)

    onnx_path = export_onnx(model, out / "generator.onnx")
    diff = max_diff(OnnxBackend(onnx_path=onnx_path, info=info), model, batches)
    log.info("wrote %s; ONNX Runtime vs PyTorch (batches %s): max |diff| %.2e", onnx_path, batches, diff)
    if diff > ONNX_TOLERANCE:
        raise BackendError(f"the ONNX export differs from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE}); not building")
    precision = "fp16" if args.fp16 else "int8" if args.int8_calib else "fp32"
    meta = {"format": BUILD_FORMAT, "version": 1, "info": dataclasses.asdict(info), "weights": weights_hash(model),
            "checkpoint": str(args.checkpoint.resolve()), "size": info.size, "opset": 17,
            "onnx": onnx_path.name, "onnx_max_diff": diff, "precision": precision, "via": args.via,
            "max_batch": args.max_batch, "opt_batch": opt_batch, "engine": None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    build_onnx = onnx_path
    if args.fp16 and args.via == "tensorrt":
        source = model.cuda() if torch.cuda.is_available() else model  # tracing in float16 is slow on a CPU
        build_onnx = export_onnx(source, out / "generator.fp16.onnx", fp16=True)
        meta["fp16_onnx"] = build_onnx.name
        meta["fp16_onnx_max_diff"] = max_diff(OnnxBackend(onnx_path=build_onnx, info=info), model, batches)
        log.info("wrote %s; max |diff| to float32 PyTorch in ONNX Runtime %.2e", build_onnx,
                 meta["fp16_onnx_max_diff"])
    if args.int8_calib is not None:
        from engine.backends import quantize

        videos = calibration_videos(args.int8_calib)
        calib = [b for v in videos for b in quantize.calibration_batches(info, v)]
        build_onnx = quantize.quantize_int8(onnx_path, out / "generator.int8.onnx", calib, for_tensorrt=True)
        q = quantize.quality(OnnxBackend(onnx_path=onnx_path, info=info),
                             OnnxBackend(onnx_path=build_onnx, info=info), calib)
        meta.update(int8_onnx=build_onnx.name, int8_calibration=[str(v) for v in videos],
                    int8_quality_vs_fp32=q)
        log.info("wrote %s, calibrated on %d frames of %d video(s): SSIM %.4f, PSNR %.1f dB against float32",
                 build_onnx, sum(len(b[0]) for b in calib), len(videos), q["ssim"], q["psnr"])
    json_path = out / BUILD_JSON
    if args.onnx_only:
        _write_json(json_path, meta)
        return 0

    why = unavailable_reason()
    if why is None and args.via == "torch-tensorrt":
        import importlib.util

        if importlib.util.find_spec("torch_tensorrt") is None:
            why = "torch-tensorrt is not installed (pip install torch-tensorrt)"
    if why is not None:
        meta["engine_error"] = why
        _write_json(json_path, meta)
        print(f"export_trt: no engine built: {why}; the ONNX export and {BUILD_JSON} are in {out} "
              f"(build the engine on a machine with an NVIDIA GPU and TensorRT)", file=sys.stderr)
        return EXIT_NO_TENSORRT

    import tensorrt as trt

    timing_cache = out / "timing.cache"
    if args.via == "tensorrt":
        engine_path = out / "generator.engine"
        build_tensorrt(build_onnx, engine_path, info.size, args.max_batch, opt_batch, timing_cache,
                       args.workspace_gib, info.mel_frames)
    else:
        engine_path = out / "generator.ep"
        build_torch_tensorrt(model, engine_path, args.fp16, args.max_batch, opt_batch, timing_cache)
    log.info("wrote %s (%.1f MB)", engine_path, engine_path.stat().st_size / 1e6)
    meta.update(engine=engine_path.name, tensorrt=trt.__version__, **running_gpu("cuda"))
    _write_json(json_path, meta)
    backend = TensorRTBackend(json_path)
    torch.backends.cudnn.allow_tf32 = False  # an exact float32 reference
    meta["engine_max_diff"] = max_diff(backend, model.cuda().float(), batches)
    _write_json(json_path, meta)
    if meta["engine_max_diff"] > ENGINE_WARN_DIFF:
        log.warning("the engine differs from PyTorch by %.3f (> %.2f): check its output before use",
                    meta["engine_max_diff"], ENGINE_WARN_DIFF)
    log.info("engine vs PyTorch float32 on %s (batches %s): max |diff| %.2e; done in %.0f s", meta["gpu"], batches,
             meta["engine_max_diff"], time.perf_counter() - t0)
    print(f"built {engine_path} ({precision}, TensorRT {meta['tensorrt']}, {meta['gpu']}); "
          f"use it with: realtime run --checkpoint {args.checkpoint} --backend tensorrt ..."
          + ("" if args.out is None else f" (or --checkpoint {out})"))
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.audio import AudioError
    from engine.checkpoints import CheckpointError
    from engine.media import MediaError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="export_trt: %(message)s")
    try:
        return export(args)
    except (FileNotFoundError, CheckpointError, BackendError, MediaError, AudioError, ValueError) as e:
        print(f"export_trt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Speed of the generator per backend and batch, and of the whole pipeline on a real clip.

    python tools/bench.py                          # the bundled model (or a random one of its shape)
    python tools/bench.py --checkpoint wav2lip_gan.pth
    python tools/bench.py --width 0.25 --no-pipeline

Prints, in one run:

* the machine: CPU, cores, load average (other work on the machine slows
  every figure), the libraries, and its measured peak: float32 matmul
  GFLOP/s on all cores (and on the GPU, float16, when there is one);
* the model and its FLOPs per frame (``torch.utils.flop_counter``, one
  multiply-add = 2 FLOPs);
* backend × batch (1, 5, 8) → ms per chunk (median), frames per second,
  GFLOP/s and the fraction of the measured peak reached; backends: torch
  (eager float32 CPU, 1 thread and all cores), onnxruntime (float32), onnxruntime-int8 (static QDQ),
  and on a GPU torch float16 and the TensorRT engine when one was built;
* the INT8 quality cost: SSIM / PSNR of its faces against float32 on face
  crops of the real clip;
* the whole pipeline (``realtime.runner.run_file``: tracking, mel,
  generator, compositing, decoding, encoding) on a real clip and speech:
  frames per second and added latency p50 / p95, for our configuration
  (chunks of k=5 in the auto backend, and INT8) against calling the same
  model once per frame in plain PyTorch (the torch backend at whichever of
  1 or all threads was faster above, k=1).

``--race N`` instead times whole processes, as a user waits for them:
``realtime run`` (as it is, and with ``--int8``) against Wav2Lip's own
``inference.py`` procedure (``tools/wav2lip_reference.py``, given its face
box for free: no detector), same Wav2Lip-architecture checkpoint
(``--checkpoint``, or random weights in the published layout: the speed does
not depend on them), clip and speech, N rounds interleaved, and prints each
process's wall time and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.backends import example_inputs  # noqa: E402
from engine.bundled import ASSETS  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_VIDEO = SHARED / "video" / "grid_bbaf2n.mpg"
DEFAULT_AUDIO = SHARED / "audio" / "librivox_ss01_0870.wav"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="generator to bench (default: engine/assets/generator.pt if present, else a random "
                        "generator of its architecture: 96 px, --width)")
    p.add_argument("--width", type=float, default=0.5, help="width of the random generator (default: 0.5)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 5, 8], help="chunk sizes (default: 1 5 8)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per cell after 2 warm-up calls (default: 10)")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="clip for the pipeline run and INT8 quality")
    p.add_argument("--audio", type=Path, default=DEFAULT_AUDIO, help="speech for the pipeline run")
    p.add_argument("--no-pipeline", action="store_true", help="generator timings only")
    p.add_argument("--race", type=int, default=0, metavar="N",
                   help="whole-process race of realtime run against Wav2Lip's inference.py procedure "
                        "(tools/wav2lip_reference.py), N interleaved rounds, instead of the tables above")
    return p


def race(checkpoint: Path | None, video: Path, audio: Path, rounds: int) -> int:
    """``--race`` (module doc): prints one line per process and round, then the medians and the ratios."""
    import subprocess

    from engine.face import FaceTracker, box_pixels
    from engine.media import read_frames_at
    from engine.models.wav2lip import Wav2Lip

    py, repo = sys.executable, Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if checkpoint is None:
            torch.manual_seed(0)
            checkpoint = tmp / "wav2lip.pth"
            torch.save({"state_dict": {"module." + k: v for k, v in Wav2Lip().state_dict().items()}}, checkpoint)
            print("checkpoint: random weights in wav2lip.pth's layout (the speed does not depend on them)")
        frame = next(iter(read_frames_at(video)))[0]
        with FaceTracker(crop="wav2lip") as tracker:
            face = tracker.track(frame, 0.0)
        if face is None:
            print(f"bench: no face in the first frame of {video}", file=sys.stderr)
            return 2
        x0, y0, x1, y1 = box_pixels(face.box)
        ours = [py, "-m", "realtime.cli", "run", "--video", str(video), "--audio", str(audio),
                "--checkpoint", str(checkpoint), "-q"]
        commands = {
            "Wav2Lip inference.py (box given)": [py, str(repo / "tools" / "wav2lip_reference.py"),
                                                 "--checkpoint_path", str(checkpoint), "--face", str(video),
                                                 "--audio", str(audio), "--box", str(y0), str(y1), str(x0), str(x1),
                                                 "--outfile", str(tmp / "reference.mp4")],
            "realtime run": ours + ["--out", str(tmp / "ours.mp4")],
            "realtime run --int8": ours + ["--int8", "--out", str(tmp / "ours_int8.mp4")],
        }
        subprocess.run(commands["realtime run --int8"], cwd=repo, capture_output=True)  # make the INT8 model once
        print(f"race: {video.name} driven by {audio.name}, {rounds} rounds interleaved; load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        times: dict[str, list[float]] = {k: [] for k in commands}
        for r in range(rounds):
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
                times[name].append(time.perf_counter() - t0)
                if done.returncode:
                    print(f"bench: {name} failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
                    return 2
                print(f"  round {r + 1}: {name:<34} {times[name][-1]:6.2f} s")
    base = float(np.median(times["Wav2Lip inference.py (box given)"]))
    for name, t in times.items():
        m = float(np.median(t))
        print(f"{name:<34} median {m:6.2f} s  ({base / m:.2f}x the reference's speed)")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


def load_model(args) -> tuple[torch.nn.Module, str]:
    """The model to bench and a line saying what it is."""
    from engine.models import load as load_generator
    from engine.models.generator import Generator, GeneratorConfig

    path = args.checkpoint or (ASSETS / "generator.pt")
    if args.checkpoint is not None or path.is_file():
        return load_generator(path), str(path)
    torch.manual_seed(0)
    return Generator(GeneratorConfig(96, args.width)).eval(), f"random Generator(96 px, width {args.width})"


def flops_per_frame(model: torch.nn.Module) -> float:
    """FLOPs of one frame (batch 1) counted by torch.utils.flop_counter (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    faces, mels = example_inputs(1, model.info.size, mel_frames=model.info.mel_frames)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.from_numpy(faces), torch.from_numpy(mels))
    return float(counter.get_total_flops())


def matmul_peak(device: str = "cpu", dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an n×n matmul on all cores (CPU) or on the GPU: the machine's practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        if i:  # the first is warm-up
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def time_backend(backend, size: int, batch: int, repeats: int) -> float:
    """Median seconds of ``backend.run`` on a chunk of ``batch`` random frames."""
    faces, mels = example_inputs(batch, size, mel_frames=backend.info.mel_frames)
    for _ in range(2):
        backend.run(faces, mels)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        backend.run(faces, mels)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


class TorchThreads:
    """A backend run with ``torch.set_num_threads(n)``: eager PyTorch's OpenMP threads wait for each
    other at every operator, which on a loaded machine can cost more than a second per call."""

    def __init__(self, backend, threads: int):
        self.backend, self.threads = backend, threads
        self.info, self.name = backend.info, backend.name

    def run(self, faces, mels):
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.backend.run(faces, mels)
        finally:
            torch.set_num_threads(previous)


def make_backends(model, cores: int) -> list[tuple[str, object, str]]:
    """(label, backend, peak key) for every backend that runs here."""
    from engine import backends
    from engine.backends.tensorrt_backend import find_engine

    eager = backends.load(model, "torch")
    out = [(f"torch fp32 ({n} thr)", TorchThreads(eager, n), "cpu") for n in sorted({1, cores})]
    why = backends.available()
    if why["onnxruntime"] is None:
        out.append(("onnxruntime fp32", backends.load(model, "onnxruntime"), "cpu"))
        out.append(("onnxruntime int8", backends.load(model, "onnxruntime", int8=True), "cpu"))
    if torch.cuda.is_available():
        out.append(("torch fp16 (cuda)", backends.load(model, "torch", device="cuda"), "cuda"))
        if why["tensorrt"] is None and find_engine(model) is not None:
            out.append(("tensorrt", backends.load(model, "tensorrt"), "cuda"))
    return out


def bench_pipeline(backend, chunk: int, video: Path, audio: Path):
    from realtime.pipeline import Pipeline, PipelineConfig
    from realtime.runner import run_file
    from realtime.sources import AudioFileSource

    pipeline = Pipeline(backend, PipelineConfig(chunk=chunk))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return run_file(pipeline, video, AudioFileSource(audio), Path(tmp) / "bench.mp4", progress=False)
    finally:
        pipeline.close()


def main(argv: list[str] | None = None) -> int:
    import onnxruntime

    from engine.backends import quantize
    from engine.backends.onnx_backend import cpu_cores

    from engine.checkpoints import CheckpointError

    args = build_parser().parse_args(argv)
    if args.race:
        return race(args.checkpoint, args.video, args.audio, args.race)
    cores = cpu_cores()
    torch.set_num_threads(cores)
    try:
        model, what = load_model(args)
    except (FileNotFoundError, CheckpointError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    size = model.info.size
    cpu_name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    print(f"machine: {cpu_name}, {cores} cores; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          "at start (other work on this machine slows every figure below)")
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    peaks = {"cpu": matmul_peak("cpu")}
    line = f"measured peak: {peaks['cpu']:.0f} GFLOP/s float32 matmul (2048², {cores} threads)"
    if torch.cuda.is_available():
        peaks["cuda"] = matmul_peak("cuda", torch.float16, n=8192)
        line += f"; {peaks['cuda']:.0f} GFLOP/s float16 on {torch.cuda.get_device_name()}"
    print(line)
    flops = flops_per_frame(model)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {what}: {model.info.kind}, {size} px, {params:.1f} M parameters, "
          f"{flops / 1e9:.2f} GFLOP per frame")

    print()
    print(f"{'backend':<20} {'batch':>5} {'ms/chunk':>9} {'frames/s':>9} {'GFLOP/s':>8} {'% peak':>7}")
    runs = make_backends(model, cores)
    torch_ms = {}
    for label, backend, peak_key in runs:
        for batch in args.batches:
            s = time_backend(backend, size, batch, args.repeats)
            if label.startswith("torch fp32"):
                torch_ms[label] = torch_ms.get(label, 0.0) + s
            gflops = flops * batch / s / 1e9
            print(f"{label:<20} {batch:>5} {1000 * s:>9.1f} {batch / s:>9.1f} {gflops:>8.1f} "
                  f"{100 * gflops / peaks[peak_key]:>6.1f}%")
    print("(% peak: of the float32 matmul peak for CPU backends, INT8 included; of the float16 peak on the GPU)")

    by_label = {label: b for label, b, _ in runs}
    if "onnxruntime int8" in by_label and args.video.is_file():
        batches = quantize.calibration_batches(model.info, args.video, chunks=15)
        q = quantize.quality(by_label["onnxruntime fp32"], by_label["onnxruntime int8"], batches)
        print(f"\nINT8 vs float32 faces on {args.video.name} ({sum(len(b[0]) for b in batches)} crops; calibrated "
              f"on the bundled demo face): SSIM {q['ssim']:.4f}, PSNR {q['psnr']:.1f} dB, "
              f"max |diff| {q['max_diff']:.3f}")

    if args.no_pipeline:
        return 0
    if not (args.video.is_file() and args.audio.is_file()):
        print(f"\npipeline: skipped ({args.video} or {args.audio} is missing)")
        return 0
    from engine import backends

    auto = backends.load(model)
    configs = [(f"ours: {auto.name}, k=5", auto, 5)]
    if "onnxruntime int8" in by_label:
        configs.append(("ours: onnxruntime int8, k=5", by_label["onnxruntime int8"], 5))
    fastest = min(torch_ms, key=torch_ms.get)  # the fairer baseline: eager PyTorch at its best thread count
    configs.append((f"plain PyTorch ({fastest.split('(')[1][:-1]}), k=1", by_label[fastest], 1))
    print(f"\npipeline: {args.video.name} driven by {args.audio.name} (run_file: tracking, mel, generator, "
          "compositing, decoding, H.264 encoding; as fast as the machine goes)")
    print(f"{'configuration':<30} {'frames':>6} {'fps':>6} {'p50 ms':>7} {'p95 ms':>7} {'generator ms/frame':>19}")
    reports = {}
    for label, backend, chunk in configs:
        r = bench_pipeline(backend, chunk, args.video, args.audio)
        reports[label] = r
        print(f"{label:<30} {r.frames:>6} {r.fps:>6.1f} {1000 * r.latency_p50:>7.0f} {1000 * r.latency_p95:>7.0f} "
              f"{1000 * r.stage_s['generator'] / max(1, r.frames):>19.1f}")
    ours, plain = reports[configs[0][0]], reports[configs[-1][0]]
    print(f"ours vs plain PyTorch once per frame: {ours.fps / plain.fps:.2f}x the frame rate, "
          f"{plain.stage_s['generator'] / ours.stage_s['generator']:.1f}x less generator time per frame, "
          f"p95 latency {1000 * ours.latency_p95:.0f} vs {1000 * plain.latency_p95:.0f} ms")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

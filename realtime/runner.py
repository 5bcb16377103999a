"""Driving a :class:`~realtime.pipeline.Pipeline` from sources to sinks.

:func:`run_file` streams a video (or image) file and a speech file through
the same real-time pipeline the live plugin uses: items are pushed in
timestamp order, as a demuxer would deliver them (or as they would arrive
live), and composited frames are pulled and written as soon as the pipeline
releases them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from realtime.pipeline import Pipeline
from realtime.sinks import Mp4Sink
from realtime.sources import AudioFileSource, VideoFileSource


class NoFaceError(ValueError):
    """No frame of the input had a face, so nothing could be lip-synced."""


@dataclass
class RunReport:
    """Figures of one run.

    frames: frames written; seconds: wall time of the whole job; fps:
    frames / seconds; latency_p50/p95: added latency (s); stage_s: compute
    seconds per stage (tracking, mel, generator, compositing, decoding,
    encoding); passthrough: frames passed through unmodified, by reason.
    """

    frames: int
    seconds: float
    latency_p50: float
    latency_p95: float
    generated: int
    passthrough: dict[str, int]
    events: dict[str, int]
    stage_s: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        """A human-readable summary."""
        per_frame = {k: 1000 * v / max(1, self.frames) for k, v in self.stage_s.items()}
        return [
            f"{self.frames} frames ({self.duration:.2f} s of video) in {self.seconds:.2f} s: "
            f"{self.fps:.1f} fps ({self.fps / 25:.2f}x real time at 25 fps)",
            f"added latency p50 {1000 * self.latency_p50:.0f} ms, p95 {1000 * self.latency_p95:.0f} ms",
            f"generated {self.generated}, passed through {sum(self.passthrough.values())}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in self.passthrough.items())})" if self.passthrough else ""),
            "time per frame: " + ", ".join(f"{k} {v:.1f} ms" for k, v in per_frame.items()),
        ] + ([f"events: {', '.join(f'{k} {v}' for k, v in self.events.items())}"] if self.events else [])


def run_file(pipeline: Pipeline, video: str | Path, audio: AudioFileSource, out: str | Path,
             progress: bool = True) -> RunReport:
    """Lip-sync ``video`` to ``audio`` through ``pipeline`` and write ``out`` (H.264 + AAC mp4).

    The video is ping-pong looped to cover the speech; the output ends with
    the speech. The output's audio track is the driving speech.

    Raises FileNotFoundError / MediaError for the video; :class:`NoFaceError`
    (and removes ``out``) when no frame had a face.
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    source = VideoFileSource(video, duration=audio.duration)
    out = Path(out)
    sink = Mp4Sink(out, source.fps, source.width, source.height)
    stages = {"decoding": 0.0, "encoding": 0.0}
    bar = tqdm(total=source.frame_count(), unit="frame", desc="lip-sync", disable=not progress, leave=False)
    ok = False
    try:
        audio_iter = iter(audio)
        pending_audio = next(audio_iter, None)

        def write(frames):
            t0 = time.perf_counter()
            for f in frames:
                sink.write(f.image, f.t)
            stages["encoding"] += time.perf_counter() - t0
            bar.update(len(frames))

        video_iter = iter(source)
        while True:
            t0 = time.perf_counter()
            item = next(video_iter, None)
            stages["decoding"] += time.perf_counter() - t0
            if item is None:
                break
            frame, t = item
            # audio up to this frame's time arrives first, as it would live
            while pending_audio is not None and pending_audio[1] <= t:
                pipeline.push_audio(*pending_audio)
                pending_audio = next(audio_iter, None)
            pipeline.push_video(frame, t)
            write(pipeline.pull())
        while pending_audio is not None:
            pipeline.push_audio(*pending_audio)
            pending_audio = next(audio_iter, None)
        pipeline.end_audio()
        pipeline.end_video()
        write(pipeline.pull())
        t0 = time.perf_counter()
        sink.write_audio(audio.samples)
        sink.close()
        stages["encoding"] += time.perf_counter() - t0
        ok = True
    finally:
        bar.close()
        if not ok:
            try:
                sink.container.close()
            except Exception:
                pass
            out.unlink(missing_ok=True)
    st = pipeline.stats
    if st.generated == 0:
        out.unlink(missing_ok=True)
        raise NoFaceError(f"no face found in any frame of {video}; nothing written")
    p50, p95 = st.latency_percentiles()
    passthrough = {k: v for k, v in st.events.items() if k == "no_face"}
    events = {k: v for k, v in st.events.items() if k != "no_face"}
    return RunReport(frames=sink.frames, seconds=time.perf_counter() - t_start, latency_p50=p50,
                     latency_p95=p95, generated=st.generated, passthrough=passthrough, events=events,
                     stage_s={**st.stage_s, **stages}, duration=sink.frames / source.fps)

"""The file driver: a :class:`~realtime.pipeline.Pipeline` from a video file and a speech file to an mp4.

:func:`run_file` streams a video (or image) file and a speech file through
the same real-time pipeline the live plugin uses: items are pushed in
timestamp order, as a demuxer would deliver them (or as they would arrive
live), and composited frames are pulled and written as soon as the pipeline
releases them, as fast as the machine allows (fast mode).

The live driver is :mod:`realtime.live`; :class:`RunReport` is the figures
of either.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


from realtime.pipeline import Pipeline
from realtime.sinks import Mp4Sink
from realtime.sources import AudioFileSource, VideoFileSource

log = logging.getLogger("realtime.runner")


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
             progress: bool = True, finish=None) -> RunReport:
    """Lip-sync ``video`` to ``audio`` through ``pipeline`` and write ``out`` (H.264 + AAC mp4).

    The video is ping-pong looped to cover the speech; the output ends with
    the speech. The output's audio track is the driving speech.

    Raises FileNotFoundError / MediaError for the video; :class:`NoFaceError`
    (and removes ``out``) when no frame had a face. ``finish``: see
    :class:`~realtime.sinks.Mp4Sink` (signing the complete file).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    source = VideoFileSource(video, duration=audio.duration)
    out = Path(out)
    sink = Mp4Sink(out, source.fps, source.width, source.height, finish=finish)
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

        tracked = _TrackAhead(source, pipeline.tracker)
        try:
            for frame, t, face in tracked:
                # audio up to this frame's time arrives first, as it would live
                while pending_audio is not None and pending_audio[1] <= t:
                    pipeline.push_audio(*pending_audio)
                    pending_audio = next(audio_iter, None)
                pipeline.push_video(frame, t, face)
                write(pipeline.pull())
        finally:
            tracked.close()
        stages["decoding"] += tracked.decoding_s
        pipeline.stats.stage_s["tracking"] += tracked.tracking_s
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
            sink.abort()
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


class _TrackAhead:
    """Decode and track a video source in a thread, a few frames ahead of generation (``run_file``).

    Iterating gives ``(frame, t, face)`` in frame order, where ``face`` is
    ``tracker.track(frame, t)`` (MediaPipe runs beside the generator: on 2
    cores the two overlap). At most ``ahead`` frames wait. An error in the
    thread is raised by the iteration; :meth:`close` stops the thread.
    ``decoding_s`` / ``tracking_s``: compute seconds spent in the thread.
    """

    _END = object()

    def __init__(self, source, tracker, ahead: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self.decoding_s = self.tracking_s = 0.0
        self._thread = threading.Thread(target=self._run, args=(source, tracker), name="dubcam-track", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source, tracker) -> None:
        try:
            frames = iter(source)
            while not self._stop.is_set():
                t0 = time.perf_counter()
                item = next(frames, None)
                t1 = time.perf_counter()
                self.decoding_s += t1 - t0
                if item is None:
                    break
                face = tracker.track(*item)
                self.tracking_s += time.perf_counter() - t1
                if not self._put((*item, face)):
                    return
            self._put(self._END)
        except BaseException as e:  # raised in the consumer
            self._put(e)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

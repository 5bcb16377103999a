"""One generator serving many sessions in shared batches (issue 15, "Cross-session batching").

:class:`SharedBatches` wraps a :class:`~engine.backends.Backend` and is one
itself. Each live session's inference thread calls :meth:`SharedBatches.run`
with its own chunk, as it would call the backend; a single worker thread
takes every chunk that is waiting at that moment, in arrival order, up to
``max_batch`` frames, runs them as one generator call and hands each
session back its own rows. Nothing waits for company: an idle worker runs
the first chunk at once, and chunks that arrive while a call is in flight
go together into the next one. So batching adds no latency when one session
is alone, and under load it turns N small calls into one larger one (the
generator is a convolutional network: a batch of 10 costs less than two of 5).

Fairness and deadlines: chunks are taken first come, first served, and a
chunk is never split, so no session can hold another back for more than one
call. Each session keeps its own deadline: its
:class:`~realtime.live.LiveRunner` measures the time its chunks take,
queueing included, and passes through the frames that could not make their
deadline (DESIGN.md drop policy) instead of queueing them.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Request:
    faces: np.ndarray
    mels: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    out: np.ndarray | None = None
    error: BaseException | None = None


class SharedBatches:
    """A backend shared by sessions whose chunks run together (module doc).

    Args:
        backend: the :class:`~engine.backends.Backend` that runs the batches.
        max_batch: most frames per generator call (default 16), ≥ 1; a
            chunk larger than that still runs, alone.

    ``run(faces, mels)`` has the backend's contract (faces ``[k, 6, S, S]``
    float32 in [0, 1], mels ``[k, 1, 80, info.mel_frames]`` float32 → ``[k, 3, S, S]``)
    and may be called from any number of threads at once; it blocks until
    its rows are back, and raises what the backend raised for that batch,
    or RuntimeError after :meth:`close`. ``stats``: ``calls`` (generator
    calls), ``chunks`` (chunks served), ``frames``, ``shared_calls``
    (calls that served more than one chunk), ``max_chunks`` (most chunks in
    one call).
    """

    def __init__(self, backend, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.backend, self.max_batch = backend, max_batch
        self.info = backend.info
        self.name = f"{backend.name}, shared batches"
        self.stats = {"calls": 0, "chunks": 0, "frames": 0, "shared_calls": 0, "max_chunks": 0}
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="dubcam-shared-batches", daemon=True)
        self._thread.start()

    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        request = _Request(faces, mels)
        with self._cond:
            if self._closed:
                raise RuntimeError("the shared backend is closed")
            self._waiting.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.out

    def _take(self) -> list[_Request] | None:
        """The chunks of the next call (first come, first served, up to ``max_batch`` frames); None when closed."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch = [self._waiting.popleft()]
            frames = len(batch[0].faces)
            while self._waiting and frames + len(self._waiting[0].faces) <= self.max_batch:
                frames += len(self._waiting[0].faces)
                batch.append(self._waiting.popleft())
            return batch

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            try:
                if len(batch) == 1:
                    outs = [self.backend.run(batch[0].faces, batch[0].mels)]
                else:
                    out = self.backend.run(np.concatenate([r.faces for r in batch]),
                                           np.concatenate([r.mels for r in batch]))
                    outs = np.split(out, np.cumsum([len(r.faces) for r in batch])[:-1])
                for r, o in zip(batch, outs):
                    r.out = o
            except BaseException as e:  # each session's run raises it
                for r in batch:
                    r.error = e
            st = self.stats
            st["calls"] += 1
            st["chunks"] += len(batch)
            st["frames"] += sum(len(r.faces) for r in batch)
            st["shared_calls"] += len(batch) > 1
            st["max_chunks"] = max(st["max_chunks"], len(batch))
            for r in batch:
                r.done.set()

    def close(self) -> None:
        """Stop the worker; chunks still waiting get RuntimeError. The wrapped backend stays usable."""
        with self._cond:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for r in left:
            r.error = RuntimeError("the shared backend was closed")
            r.done.set()
        self._thread.join(timeout=10)

"""engine.backends.shared: sessions that share one generator get their own rows back, in order, from shared calls."""

import threading
import time

import numpy as np
import pytest

from engine import backends
from engine.backends import example_inputs
from engine.backends.shared import SharedBatches
from realtime.pipeline import Pipeline, PipelineConfig
from tests.test_pipeline import feed


class Slowed:
    """The real backend, each call taking ``delay_s`` longer (a busy device): calls from several sessions overlap."""

    def __init__(self, backend, delay_s: float = 0.03):
        self.backend, self.delay_s, self.info, self.name = backend, delay_s, backend.info, backend.name
        self.batches: list[int] = []

    def run(self, faces, mels):
        self.batches.append(len(faces))
        time.sleep(self.delay_s)
        return self.backend.run(faces, mels)


@pytest.fixture(scope="module")
def ort(small_generator):
    return backends.load(small_generator, "onnxruntime")


def test_concurrent_chunks_share_calls_and_each_gets_its_own_rows(ort):
    slowed = Slowed(ort)
    shared = SharedBatches(slowed, max_batch=12)
    inputs = {s: [example_inputs(5, ort.info.size, seed=100 * s + i) for i in range(6)] for s in range(3)}
    expected = {s: [ort.run(*x) for x in xs] for s, xs in inputs.items()}
    got = {s: [] for s in inputs}

    def session(s):
        for x in inputs[s]:
            got[s].append(shared.run(*x))

    threads = [threading.Thread(target=session, args=(s,)) for s in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    shared.close()
    for s in inputs:  # in order, and each chunk's own rows (the other sessions' rows differ a lot)
        assert len(got[s]) == 6
        for g, e in zip(got[s], expected[s]):
            assert np.abs(g - e).max() < 1e-4
    assert np.abs(expected[0][0] - expected[1][0]).max() > 0.05
    assert shared.stats["chunks"] == 18 and shared.stats["frames"] == 90
    assert shared.stats["shared_calls"] > 0 and shared.stats["calls"] < 18
    assert max(slowed.batches) <= 12  # never more than max_batch frames; a chunk is never split
    assert all(b % 5 == 0 for b in slowed.batches)


def test_a_failed_call_raises_in_every_session_it_served_and_close_releases_the_waiting(ort):
    class Failing:
        info, name = ort.info, "failing"

        def __init__(self):
            self.release = threading.Event()

        def run(self, faces, mels):
            self.release.wait(10)
            raise RuntimeError("device lost")

    failing = Failing()
    shared = SharedBatches(failing)
    errors = []

    def call():
        try:
            shared.run(*example_inputs(2, ort.info.size))
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # one call in flight, two waiting
    failing.release.set()
    for t in threads:
        t.join(timeout=20)
    assert errors == ["device lost"] * 3
    shared.close()
    with pytest.raises(RuntimeError, match="closed"):
        shared.run(*example_inputs(1, ort.info.size))
    assert not shared._thread.is_alive()
    with pytest.raises(ValueError, match="at least 1"):
        SharedBatches(ort, max_batch=0)


def test_three_sessions_through_one_shared_generator_get_their_own_mouths(ort, grid_frames):
    """A real clip, its mirror image, the mirror with speech half a second later: dubbed together as alone."""
    frames, audio = grid_frames
    sessions = {"clip": (frames, audio), "mirror": (frames[:, :, ::-1].copy(), audio),
                "later_mirror": (frames[:, :, ::-1].copy(), np.roll(audio, 8000))}
    config = PipelineConfig(chunk=5)

    def dub(backend, name, into):
        p = Pipeline(backend, config)
        into[name] = feed(p, *sessions[name])
        p.close()

    alone = {}
    for name in sessions:
        dub(ort, name, alone)
    slowed = Slowed(ort)
    shared = SharedBatches(slowed)
    together = {}
    threads = [threading.Thread(target=dub, args=(shared, name, together)) for name in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    shared.close()
    assert shared.stats["shared_calls"] > 0
    for name in sessions:
        a, b = alone[name], together[name]
        assert [f.t for f, _ in b] == [f.t for f, _ in a] == [i / 25 for i in range(len(frames))]
        assert all(f.generated for f, _ in b)
        diff = max(np.abs(fa.image.astype(int) - fb.image.astype(int)).max() for (fa, _), (fb, _) in zip(a, b))
        assert diff <= 2, f"{name}: shared calls changed the frames by up to {diff}"
    for name in ("mirror", "later_mirror"):  # each session's frames differ from the clip's: rows were not swapped
        crossed = np.abs(together["clip"][40][0].image.astype(int) - together[name][40][0].image[:, ::-1]).max()
        assert crossed > 8, name

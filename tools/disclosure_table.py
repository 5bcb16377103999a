"""The disclosure marks on real clips, as a table: what `realtime verify` says, and the watermark's figures.

    python -m tools.disclosure_table [--data ../shared/data] [--audio audio/cmuarctic_a0007.wav] [--out DIR]

For every clip in ``DATA/video``: ``realtime run`` (default settings: H.264
CRF 18 veryfast) driven by ``--audio``; the output re-encoded with H.264 at
CRF 28 (PyAV, video only: a re-encode drops the C2PA manifest, so only the
watermark can answer); the output through the VP8 hop of ``realtime serve
--webrtc`` (aiortc's own ``Vp8Encoder`` / ``Vp8Decoder`` in memory, at its
starting bitrate, 500 kbit/s, and at its highest, 1.5 Mbit/s, which its
bandwidth estimate reaches on a good link: the frames a browser receives). Then
:func:`engine.provenance.verify` on each, on the untouched clip and on the
bundled demo photo. Prints one row per file: verdict, manifest state,
watermark bit accuracy (bit reads: U and V of each block), voted accuracy, p-value, and the
embedding cost in ms per frame (mask + embed, measured on the clip's
tracked faces, median). Exit status 0 when every output (and re-encode / VP8 hop)
reads "dubbed" and every untouched input "no marks found", else 1.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def reencode(src: Path, dst: Path, crf: int = 28) -> None:
    """``src``'s video as H.264 (libx264, yuv420p, ``crf``, preset medium) in ``dst``; no audio, no metadata."""
    import av

    from engine.media import probe_video, read_frames

    info = probe_video(src)
    rate = Fraction(info.fps).limit_denominator(1001)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = info.width // 2 * 2, info.height // 2 * 2, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame, _ in read_frames(src):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:stream.height, :stream.width]), format="rgb24")
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def vp8_hop(src: Path, bitrate: int | None = None):
    """``src``'s frames after aiortc's VP8 encoder, RTP payloads and depayloader, and decoder: ``(rgb, t)``.

    ``bitrate``: bit/s (aiortc keeps it within 250 k–1.5 M); default: aiortc's starting 500 kbit/s.
    """
    import av
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame

    from engine.media import read_frames

    enc, dec = Vp8Encoder(), Vp8Decoder()
    if bitrate is not None:
        enc.target_bitrate = bitrate
    for n, (frame, t) in enumerate(read_frames(src)):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts, vf.time_base = n * 3600, Fraction(1, 90000)
        payloads, ts = enc.encode(vf)
        data = b"".join(vp8_depayload(p) for p in payloads)
        for out in dec.decode(JitterFrame(data=data, timestamp=ts)):
            yield out.to_ndarray(format="rgb24"), t


def embed_cost_ms(video: Path, frames: int = 50) -> float:
    """Median ms per frame of :func:`~engine.provenance.mask_blocks` + :func:`~engine.provenance.embed_watermark`
    (the median: other work on the machine makes single frames slow)."""
    from engine.face import FaceTracker
    from engine.media import read_frames
    from engine.provenance import EMBED_MASK_LEVEL, embed_watermark, mask_blocks

    spent = []
    with FaceTracker() as tracker:
        for frame, t in read_frames(video):
            face = tracker.track(frame, t)
            if face is None:
                continue
            t0 = time.perf_counter()
            embed_watermark(frame, mask_blocks(face.landmarks, face.box, frame.shape, EMBED_MASK_LEVEL))
            spent.append(time.perf_counter() - t0)
            if len(spent) == frames:
                break
    return 1000 * float(np.median(spent)) if spent else float("nan")


def main(argv=None) -> int:
    from engine.bundled import ASSETS
    from engine.provenance import read_watermark, verify

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--audio", default="audio/cmuarctic_a0007.wav", help="driving speech, relative to --data")
    p.add_argument("--out", type=Path, default=Path("/tmp/dubcam_disclosure"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, ok = [], True

    def row(name, kind, want, v=None, mark=None, cost=None):
        nonlocal ok
        mark = mark or v.watermark
        dubbed = v.dubbed if v is not None else mark.present
        manifest = (v.manifest.state if v.manifest.present else "none") if v is not None else "-"
        good = dubbed == want
        ok &= good
        rows.append(f"{name:28s} {kind:12s} {'dubbed' if dubbed else 'no marks':9s} {manifest:8s} "
                    f"{100 * mark.bit_accuracy:6.1f} {100 * mark.vote_accuracy:6.1f} {mark.cells:5d} "
                    f"{mark.p_value:9.1e} {cost if cost is not None else float('nan'):6.2f} {'ok' if good else 'WRONG'}")
        print(rows[-1], flush=True)

    print(f"{'file':28s} {'what':12s} {'verdict':9s} {'C2PA':8s} {'bit%':>6s} {'vote%':>6s} {'cells':>5s} "
          f"{'p':>9s} {'ms/fr':>6s}")
    for clip in sorted((args.data / "video").iterdir()):
        out = args.out / f"{clip.stem}.mp4"
        r = subprocess.run([sys.executable, "-m", "realtime.cli", "run", "-q", "--video", str(clip), "--audio",
                            str(args.data / args.audio), "--out", str(out)], capture_output=True, text=True)
        if r.returncode:
            print(f"{clip.name}: realtime run failed: {r.stderr.strip().splitlines()[-1:]}")
            ok = False
            continue
        cost = embed_cost_ms(clip)
        row(clip.name, "input", False, verify(clip))
        row(clip.name, "output", True, verify(out), cost=cost)
        crf28 = args.out / f"{clip.stem}.crf28.mp4"
        reencode(out, crf28)
        row(clip.name, "H.264 CRF 28", True, verify(crf28))
        row(clip.name, "VP8 500k", True, mark=read_watermark(vp8_hop(out)))
        row(clip.name, "VP8 1.5M", True, mark=read_watermark(vp8_hop(out, 1_500_000)))
    for still in (ASSETS / "demo_face.png",):
        row(still.name, "input", False, verify(still))
    print("all as expected" if ok else "SOME VERDICTS WRONG")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

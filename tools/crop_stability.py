"""Does the face crop leak the mouth? ``python tools/crop_stability.py DATA``.

For every clip that ``python -m train.preprocess`` wrote to ``DATA``, the
Pearson r between the side of the generator's crop box (the smoothed box
stored in ``boxes``) and the inner-lip gap (MediaPipe points 13 and 14, from
``landmarks``), over the clip's frames with a face. A crop that grows as the
jaw opens tells the generator, through its pose reference, what the original
mouth did (issue 9 item 3): with the ``"square"`` crop of all 478 landmarks
the median r over the 95 GRID training clips was 0.70. The script also gives
the r that a box of all landmarks (1.1 × their larger side) would have on the
same clips, for comparison. Prints one line per clip and the medians.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def clip_correlations(path: Path) -> tuple[float, float, int]:
    """``(r of the stored crop side, r of a whole-landmark box side, frames)`` of one clip file."""
    with np.load(path) as z:
        valid, boxes, landmarks = z["valid"], z["boxes"], z["landmarks"].astype(np.float64)
    boxes, landmarks = boxes[valid], landmarks[valid]
    gap = np.linalg.norm(landmarks[:, 13] - landmarks[:, 14], axis=1)
    side = boxes[:, 2] - boxes[:, 0]
    whole = 1.1 * np.maximum(np.ptp(landmarks[:, :, 0], axis=1), np.ptp(landmarks[:, :, 1], axis=1))
    if len(gap) < 3 or gap.std() == 0 or side.std() == 0:
        return float("nan"), float("nan"), len(gap)
    return float(np.corrcoef(side, gap)[0, 1]), float(np.corrcoef(whole, gap)[0, 1]), len(gap)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="folder written by python -m train.preprocess")
    p.add_argument("--only", help="only clips whose name starts with this (e.g. s for GRID speakers)")
    args = p.parse_args(argv)
    rows = list(csv.DictReader(open(args.data / "manifest.csv")))
    ours, whole = [], []
    for row in rows:
        if args.only and not row["clip"].startswith(args.only):
            continue
        r, r_whole, n = clip_correlations(args.data / "clips" / f"{row['clip']}.npz")
        print(f"{row['clip'][:60]:60s} {n:5d} frames  crop r {r:+.2f}   whole-landmark box r {r_whole:+.2f}")
        if np.isfinite(r):
            ours.append(r)
            whole.append(r_whole)
    print(f"{len(ours)} clips: median r crop side vs mouth opening {np.median(ours):+.3f} "
          f"(whole-landmark box: {np.median(whole):+.3f}); mean {np.mean(ours):+.3f} ({np.mean(whole):+.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure the ``crop_scale`` that makes the node's face crops frame faces as a dataset does.

    python scripts/measure_crop_scale.py [--root fer2013/val] [--count 400]

Each dataset image (already a face crop) is enlarged to 192 px, put in the
middle of a grey canvas and run through the node's own face detector; the
ratio image side / detector box side is the enlargement the node must apply
to the detector's box to reproduce the dataset's framing.  Prints the median
and quartiles for the short- and full-range models, and the vertical offset
of the box centre from the image centre.
"""
import argparse
import random

import cv2
import numpy as np

from wscfer_ros.perception.colours import convert
from wscfer_ros.perception.detector import FaceDetector
from wscfer_train.data import data_root

SIDE = 192


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="fer2013/val", help="image folder, relative to WSCFER_DATA")
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args(argv)
    files = sorted((data_root() / args.root).glob("*/*.*"))
    files = random.Random(0).sample(files, min(args.count, len(files)))
    print("| detector | found | crop_scale median | quartiles | box centre below image centre |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("short", "full"):
        detector = FaceDetector(mode, 0.5, 1, 1, tiling=0)   # one face filling the image: no tiles
        ratios, offsets = [], []
        for path in files:
            face = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (SIDE, SIDE),
                              interpolation=cv2.INTER_CUBIC)
            canvas = cv2.copyMakeBorder(face, SIDE, SIDE, SIDE, SIDE, cv2.BORDER_CONSTANT, value=128)
            found = detector.detect(convert(canvas, "gray", "rgb"))
            if found:
                x, y, w, h = found[0].box
                ratios.append(SIDE / max(w, h))
                offsets.append((y + h / 2 - 1.5 * SIDE) / SIDE)
        q1, median, q3 = np.percentile(ratios, [25, 50, 75])
        print(f"| {mode} | {len(ratios)}/{len(files)} | {median:.3f} | {q1:.2f}-{q3:.2f} | "
              f"{100 * np.median(offsets):.1f} % of the side |")
        detector.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

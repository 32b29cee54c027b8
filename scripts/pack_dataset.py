"""Pack a training config's datasets into one small ``.npz`` that travels with the code.

    python scripts/pack_dataset.py --config config/train_fer2013.yaml --out pack/fer2013.npz

The training and validation images are decoded as the config says (size,
colour) and re-encoded as JPEG (quality 85 by default: FER2013's 32,298
faces take about 33 MB), with their labels and class names.  Train on it
with the ``packed`` format, e.g. on a GPU machine that has no copy of the data
(the re-encoding costs a little: the shipped model scores 62.36 % on the
quality-85 pack of FER2013 PublicTest against 62.69 % on the original files,
so report final numbers on the originals)::

    wscfer-train --config config/train_fer2013.yaml \\
        'data.train={format: packed, root: pack, file: fer2013.npz, split: train}' \\
        'data.val={format: packed, root: pack, file: fer2013.npz, split: val}'
"""
import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import yaml

from wscfer_train.config import load_config
from wscfer_train.data import data_root, load_dataset


def encode(images: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated JPEG bytes and the offsets of each image (len + 1)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    chunks = [cv2.imencode(".jpg", image if image.ndim == 2 else image[..., ::-1], params)[1]
              for image in images]
    offsets = np.zeros(len(chunks) + 1, np.int64)
    np.cumsum([len(chunk) for chunk in chunks], out=offsets[1:])
    return np.concatenate(chunks), offsets


def named_spec(text: str) -> tuple[str, dict]:
    """``NAME=SPEC`` as (name, the spec's YAML read)."""
    name, sep, spec = text.partition("=")
    if not sep or not name or name in ("train", "val"):
        raise argparse.ArgumentTypeError(f"expected NAME=SPEC with a NAME other than train and val, got {text!r}")
    return name, yaml.safe_load(spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training YAML whose data.train and data.val to pack")
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality (default 85)")
    parser.add_argument("--split", action="append", default=[], type=named_spec, metavar="NAME=SPEC",
                        help="one more dataset to pack as split NAME (SPEC: a dataset spec as YAML), e.g. "
                             "the faces an evaluation scores; repeatable")
    args = parser.parse_args(argv)
    data = load_config(args.config)["data"]
    arrays, class_names = {}, None
    for split, spec in [("train", data["train"]), ("val", data["val"]), *args.split]:
        dataset = load_dataset(spec, size=data["size"], color=data["color"], data_root=data_root())
        if class_names not in (None, dataset.class_names):
            raise ValueError(f"the {split} split's classes differ from train's: {dataset.class_names} vs "
                             f"{class_names}")
        class_names = dataset.class_names
        arrays[f"{split}_bytes"], arrays[f"{split}_offsets"] = encode(dataset.images, args.quality)
        arrays[f"{split}_labels"] = dataset.labels.astype(np.int16)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, class_names=np.array(class_names), **arrays)
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

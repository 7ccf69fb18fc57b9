"""Why a nuclei model scores lower on the same nuclei in a larger field of view.

The DSB 2018 sample (512 x 512, shipped with stardist) is segmented with a model package
(default: the embedded model) at scale 1:

1. alone, assembled whole and blockwise (256 x 256 blocks): the stitching's share;
2. inside a border of flat background (the sample's 1st percentile) of 8, 32 and 96 pixels,
   normalised with its own statistics and with the statistics of the sample alone: the
   border context's share (the runtime mirrors an image's own edge; a background border
   shows nuclei cut by a straight edge next to nothing) and the normalisation's share (a
   larger dark area moves the 99.8th percentile);
3. the mosaic of the issue: 16 copies (mirrored in turn) in a 2144 x 2144 field with
   32-pixel background gaps, scored copy by copy.

Prints AP@0.5 and AP@0.75 against the sample's ground truth for each. The sample is data
the embedded model was partly trained on (its left half): these figures compare settings,
they are not a quality claim.

Usage: python scripts/eval_field_of_view.py [--model PACKAGE] [--no-mosaic]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np


def _scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    from ppp_zoo.evaluate import evaluate_image

    r = evaluate_image(pred, gt)
    return round(r.ap["0.5"], 3), round(r.ap["0.75"], 3)


def mosaic_case(seg, image: np.ndarray, gt: np.ndarray, background: float, n: int = 4,
                gap: int = 32) -> dict:
    """The sample placed n x n times (mirrored in turn) in a field of ``background`` with
    ``gap``-pixel gaps, segmented at once; AP@0.5 of every copy against its ground truth."""
    side = image.shape[0]
    size = n * side + (n + 1) * gap
    field = np.full((size, size), background, image.dtype)
    copies = []
    for i in range(n):
        for j in range(n):
            y, x = gap + i * (side + gap), gap + j * (side + gap)
            flip = (slice(None, None, -1 if i % 2 else 1), slice(None, None, -1 if j % 2 else 1))
            field[y:y + side, x:x + side] = image[flip]
            copies.append((y, x, flip))
    t = time.perf_counter()
    labels = seg.segment(field).labels
    seconds = time.perf_counter() - t
    per_copy = [_scores(labels[y:y + side, x:x + side], gt[flip])[0] for y, x, flip in copies]
    return {"size": size, "seconds": seconds, "per_copy": per_copy,
            "mean": float(np.mean(per_copy))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="package (default: the embedded model)")
    parser.add_argument("--no-mosaic", action="store_true", help="skip the 2144 x 2144 field")
    args = parser.parse_args(argv)

    from ppp_zoo.data import load_dsb_sample
    from ppp_zoo.runtime import create_engine, load_segmenter, open_package, resolve_model
    from ppp_zoo.runtime.segment import Segmenter

    image, gt = load_dsb_sample()
    path = resolve_model(args.model)
    seg = load_segmenter(path, device="cpu")
    package = open_package(path)
    # the package's scale_range with the statistics of the sample alone, fixed
    lo, hi = np.quantile(image.astype(np.float64), [0.01, 0.998])
    gain = 1.0 / (hi - lo + 1e-6)
    fixed = dataclasses.replace(package, preprocessing=(
        {"id": "scale_linear", "kwargs": {"gain": gain, "offset": -lo * gain}},))
    seg_fixed = Segmenter(fixed, create_engine(fixed, "onnx", "cpu"))

    print(f"alone, whole assembly:      AP@0.5/0.75 {_scores(seg.segment(image).labels, gt)}")
    blocks = seg.segment(image, block=(256, 256)).labels
    print(f"alone, 256x256 blocks:      AP@0.5/0.75 {_scores(blocks, gt)}")
    background = float(np.percentile(image, 1))
    for pad in (8, 32, 96):
        field = np.pad(image, pad, constant_values=background)
        inner = (slice(pad, pad + image.shape[0]), slice(pad, pad + image.shape[1]))
        own = _scores(seg.segment(field).labels[inner], gt)
        alone = _scores(seg_fixed.segment(field).labels[inner], gt)
        p_high = float(np.quantile(field.astype(np.float64), 0.998))
        print(f"background border {pad:3d} px: own statistics {own}, the sample's statistics "
              f"{alone}; 99.8th percentile {p_high:.0f} (alone {hi:.0f})")
    if args.no_mosaic:
        return 0
    r = mosaic_case(seg, image, gt, background)
    print(f"mosaic {r['size']}x{r['size']} ({r['seconds']:.0f} s): AP@0.5 per copy "
          f"{r['per_copy']}, mean {r['mean']:.3f}; unmirrored copies {r['per_copy'][0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

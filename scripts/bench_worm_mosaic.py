"""A plate-sized worm image in bounded memory: a 2080 x 2784 mosaic (4 x 4 tiles of
BBBC010's 520 x 696) segmented with ``ppp-worms2d`` by ``ppp-zoo segment``'s code path.

Each tile is a held-out :func:`ppp_zoo.data.synth_worms` image (worms of the training
sizes, both renderings, a seed training never draws); the mosaic is segmented in one call
(``segment_image``: the network tile by tile, the overlapping instances assembled block by
block past the size limit), in a child process whose peak resident memory is measured. Each
tile's ground-truth worms are then compared (overlap-aware AP) with the predicted masks cut
to that tile, and the same tile segmented alone is scored beside it.

Prints the peak RSS, the time, the mean per-tile AP@0.5 of the mosaic and of the tiles
alone, and exits 1 when the peak exceeds ``--max-gb`` (default 6) or the mosaic's per-tile
AP@0.5 is under ``--min-ap`` (default 0.85).

Usage:
  python scripts/bench_worm_mosaic.py [--model ppp-worms2d] [--seed 7] [--max-gb 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = (520, 696)
GRID = (4, 4)


def mosaic(seed: int):
    from ppp_zoo.data.synth import synth_worms_dataset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_worms import TRAIN_GEOMETRY

    geometry = {**TRAIN_GEOMETRY, "n_worms": (8, 16)}
    pairs = synth_worms_dataset(GRID[0] * GRID[1], np.random.SeedSequence([seed, 5]),
                                shape=TILE, rendering="mixed", **geometry)
    image = np.zeros((GRID[0] * TILE[0], GRID[1] * TILE[1]), np.float32)
    for k, (tile, _) in enumerate(pairs):
        i, j = divmod(k, GRID[1])
        image[i * TILE[0]:(i + 1) * TILE[0], j * TILE[1]:(j + 1) * TILE[1]] = tile
    return image, pairs


CHILD = r'''
import json, resource, sys, time
import numpy as np
from ppp_zoo.runtime.models import resolve_model
from ppp_zoo.runtime.segment import segment_image
image = np.load(sys.argv[1])
t = time.perf_counter()
result = segment_image(resolve_model(sys.argv[2]), image, engine="onnx", device="cpu")
seconds = time.perf_counter() - t
np.save(sys.argv[3], np.packbits(result.labels.reshape(len(result.labels), -1), axis=1))
print(json.dumps({"seconds": seconds, "n": int(len(result.labels)),
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "timings": result.timings}))
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ppp-worms2d")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-gb", type=float, default=6.0)
    parser.add_argument("--min-ap", type=float, default=0.85)
    args = parser.parse_args(argv)

    from ppp_zoo.evaluate import evaluate_image
    from ppp_zoo.runtime.models import resolve_model
    from ppp_zoo.runtime.segment import segment_image

    image, pairs = mosaic(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "image.npy", image)
        out = subprocess.run([sys.executable, "-c", CHILD, str(Path(tmp) / "image.npy"),
                              args.model, str(Path(tmp) / "masks.npy")],
                             check=True, capture_output=True, text=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])
        bits = np.load(Path(tmp) / "masks.npy")
    masks = np.unpackbits(bits, axis=1, count=image.size).astype(bool) \
        .reshape((info["n"],) + image.shape)
    per_tile, alone = [], []
    model = resolve_model(args.model)
    t = time.perf_counter()
    for k, (tile, gt) in enumerate(pairs):
        i, j = divmod(k, GRID[1])
        window = (slice(i * TILE[0], (i + 1) * TILE[0]), slice(j * TILE[1], (j + 1) * TILE[1]))
        cut = masks[(slice(None),) + window]
        cut = cut[cut.reshape(len(cut), -1).any(axis=1)]
        per_tile.append(evaluate_image(cut, gt, overlapping=True).ap["0.5"])
        own = segment_image(model, tile, engine="onnx", device="cpu").labels
        alone.append(evaluate_image(own, gt, overlapping=True).ap["0.5"])
    tiles_seconds = time.perf_counter() - t
    report = {"shape": list(image.shape), "instances": info["n"],
              "peak_rss_gb": round(info["peak_gb"], 2), "seconds": round(info["seconds"], 1),
              "timings": {k: round(v, 2) for k, v in info["timings"].items()},
              "per_tile_ap50_mean": round(float(np.mean(per_tile)), 4),
              "per_tile_ap50_min": round(float(np.min(per_tile)), 4),
              "tiles_alone_ap50_mean": round(float(np.mean(alone)), 4),
              "tiles_alone_seconds": round(tiles_seconds, 1)}
    print(json.dumps(report, indent=1))
    print(f"mosaic {image.shape[0]}x{image.shape[1]}: peak RSS {report['peak_rss_gb']:.2f} GB, "
          f"{report['seconds']:.1f} s; per-tile AP@0.5 {report['per_tile_ap50_mean']:.3f} "
          f"(min {report['per_tile_ap50_min']:.3f}) vs the tiles alone "
          f"{report['tiles_alone_ap50_mean']:.3f}")
    ok = report["peak_rss_gb"] <= args.max_gb and report["per_tile_ap50_mean"] >= args.min_ap
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

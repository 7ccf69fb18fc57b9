"""Overlapping worms: the embedded ``ppp-worms2d`` against its peers, with overlap-aware AP.

Held-out sets, drawn by :func:`ppp_zoo.data.synth_worms` with the posture model and seeds
that training never uses (``SeedSequence([--seed, k])``; training draws from seed 0):

  * ``fluorescence``: ``--n`` images of 320 x 320, worms of the training sizes (70-220 px
    long, 6-11 px wide), bright on a dark uneven background, debris;
  * ``brightfield``: the same geometry rendered as BBBC010's transmitted-light channel
    (worms darker or lighter than an uneven field, halos, well edges, debris);
  * ``bbbc010-size``: ``--n // 2`` images of 520 x 696 with BBBC010's worm sizes (250-350 px
    long, 10-14 px wide; both renderings): the model must find their scale itself
    (``--scale auto``).

These sets come from the generator the model was trained with (other seeds, and for
``bbbc010-size`` other sizes): they measure what the generator covers, not other
microscopes.

Methods, each scored with the same overlap-aware matching (every instance is a mask; a
pixel may lie in two masks; AP = TP / (TP + FP + FN)):

  * ``ppp-worms2d`` through its package with ONNX Runtime, as ``ppp-zoo segment`` runs it
    (scale 1 on the first two sets, ``auto`` on the third);
  * ``otsu+watershed``: background flattened (Gaussian of sigma 20 subtracted), the worms'
    polarity taken as the minority side, Otsu threshold, objects of >= 60 px, distance
    transform peaks at least 8 px apart as watershed markers;
  * ``cellpose`` (with ``--cellpose-env``, a virtual environment holding
    ``cellpose==3.1.1.2``: not a dependency of ppp-zoo): trained from scratch on CPU for
    ``--cellpose-minutes`` on the model's own training images (each worm a label; where
    worms cross, the later worm's label), then run on every set at the true scale.

Label images cannot hold overlaps: a crossing costs the peers at least one worm's mask in
every pair.

Prints a Markdown table (AP@0.5, AP@0.75, avAP, seconds per image), writes ``--out``
/worms.json and /worms.png (one example per set, each instance outlined in its own colour).

Usage:
  python scripts/eval_worms.py [--model ppp-worms2d] [--n 16] [--seed 2026]
      [--cellpose-env /path/to/venv --cellpose-minutes 20] [--out runs/worms-eval]
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

TRAIN_GEOMETRY = {"length": (70.0, 220.0), "width": (6.0, 11.0), "n_worms": (3, 10),
                  "cross_fraction": 0.7, "max_overlap": 0.3, "blur": 1.0, "photons": 60.0,
                  "debris": (0, 12), "well_edge": 0.4}
"""The training generator's arguments (preset ``worms2d-general``) but the rendering."""

BBBC010_GEOMETRY = {"length": (250.0, 350.0), "width": (10.0, 14.0), "n_worms": (5, 12),
                    "cross_fraction": 0.5, "debris": (0, 12), "well_edge": 0.4}
"""BBBC010's image size, worm sizes and counts (the generator's defaults)."""

BASELINE = {"flatten": 20.0, "min_size": 60, "min_distance": 8}


def heldout_sets(n: int, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The held-out sets: name -> [(image, masks (N, Y, X))]."""
    from ppp_zoo.data.synth import synth_worms_dataset

    return {
        "fluorescence": synth_worms_dataset(n, np.random.SeedSequence([seed, 1]),
                                            shape=(320, 320), rendering="fluorescence",
                                            **TRAIN_GEOMETRY),
        "brightfield": synth_worms_dataset(n, np.random.SeedSequence([seed, 2]),
                                           shape=(320, 320), rendering="brightfield",
                                           **TRAIN_GEOMETRY),
        "bbbc010-size": synth_worms_dataset(max(n // 2, 1), np.random.SeedSequence([seed, 3]),
                                            shape=(520, 696), rendering="mixed",
                                            **BBBC010_GEOMETRY),
    }


def otsu_watershed(image: np.ndarray, flatten: float = 20.0, min_size: int = 60,
                   min_distance: int = 8) -> np.ndarray:
    """The classic baseline for worms of either polarity (a label image)."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    img = image.astype(np.float32)
    flat = ndimage.gaussian_filter(img, 1.0) - ndimage.gaussian_filter(img, flatten)
    mask = flat > threshold_otsu(flat)
    if mask.mean() > 0.5:  # dark worms on a bright field: the minority side is the worms
        mask = flat < threshold_otsu(flat)
    components, _ = ndimage.label(mask)
    keep = np.bincount(components.ravel()) >= min_size
    keep[0] = False
    mask = keep[components]
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(mask)[0])
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def as_masks(labels: np.ndarray) -> np.ndarray:
    """A label image (or a mask stack, returned as is) as an (N, Y, X) mask stack."""
    if labels.dtype == bool:
        return labels
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return labels[None] == ids[:, None, None] if len(ids) else \
        np.zeros((0,) + labels.shape, bool)


def flatten_masks(masks: np.ndarray) -> np.ndarray:
    """Mask stack -> label image, later masks over earlier ones (how a label image stores
    crossing worms)."""
    labels = np.zeros(masks.shape[1:], np.int32)
    for i, m in enumerate(masks, 1):
        labels[m] = i
    return labels


def score(pairs) -> dict:
    from ppp_zoo.evaluate import evaluate_image

    rs = [evaluate_image(as_masks(p), g, overlapping=True) for p, g in pairs]
    return {"ap50": round(float(np.mean([r.ap["0.5"] for r in rs])), 4),
            "ap75": round(float(np.mean([r.ap["0.75"] for r in rs])), 4),
            "avAP": round(float(np.mean([r.avAP for r in rs])), 4)}


CELLPOSE_SCRIPT = r'''
import sys, time, numpy as np
from cellpose import models, train, utils
data = np.load(sys.argv[1], allow_pickle=True)
minutes = float(sys.argv[2])
imgs = [x.astype(np.float32) for x in data["train_images"]]
labs = [x.astype(np.int32) for x in data["train_labels"]]
net = models.CellposeModel(gpu=False, pretrained_model=None, diam_mean=30.0)
t = time.time()  # one epoch to time it, then the epochs that fit the budget
train.train_seg(net.net, train_data=imgs, train_labels=labs, channels=[0, 0], n_epochs=1,
                save_path=sys.argv[4], model_name="probe", min_train_masks=1)
epochs = max(1, int(minutes * 60 / (time.time() - t)) - 1)
t = time.time()
path = train.train_seg(net.net, train_data=imgs, train_labels=labs, channels=[0, 0],
                       n_epochs=epochs, save_path=sys.argv[4], model_name="worms",
                       min_train_masks=1)[0]
out = {"epochs": epochs, "train_seconds": time.time() - t}
trained = models.CellposeModel(gpu=False, pretrained_model=str(path))
for key in data.files:
    if key.startswith("test_") and not key.endswith("_gt"):
        t = time.time()
        masks = [trained.eval(x.astype(np.float32), channels=[0, 0],
                              diameter=float(utils.diameters(g)[0]))[0]
                 for x, g in zip(data[key], data[key + "_gt"])]
        out[key] = np.array(masks + [None], dtype=object)[:-1]
        out["seconds_" + key] = (time.time() - t) / max(len(masks), 1)
np.savez(sys.argv[3], **out)
'''


def run_cellpose(env: Path, train_pairs, sets: dict, minutes: float) -> tuple[dict, dict]:
    """Train Cellpose from scratch in ``env`` for ``minutes`` and segment every set at the
    true scale (each image's diameter from its ground truth): ``({set: labels}, {set:
    seconds per image, "epochs": ...})``."""
    def objects(arrays):
        arrays = list(arrays)
        out = np.empty(len(arrays), dtype=object)
        out[:] = list(arrays)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arrays = {"train_images": objects(i for i, _ in train_pairs),
                  "train_labels": objects(flatten_masks(m) for _, m in train_pairs)}
        for name, pairs in sets.items():
            arrays[f"test_{name}"] = objects(i for i, _ in pairs)
            arrays[f"test_{name}_gt"] = objects(flatten_masks(m) for _, m in pairs)
        np.savez(tmp / "data.npz", **arrays)
        (tmp / "run.py").write_text(CELLPOSE_SCRIPT)
        subprocess.run([str(env / "bin" / "python"), str(tmp / "run.py"), str(tmp / "data.npz"),
                        str(minutes), str(tmp / "out.npz"), str(tmp)], check=True)
        with np.load(tmp / "out.npz", allow_pickle=True) as out:
            labels = {n: list(out[f"test_{n}"]) for n in sets}
            info = {n: float(out[f"seconds_test_{n}"]) for n in sets}
            info["epochs"] = int(out["epochs"])
            info["train_seconds"] = float(out["train_seconds"])
    return labels, info


def write_picture(sets: dict, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    methods = list(results)
    fig, axes = plt.subplots(len(sets), len(methods) + 1,
                             figsize=(4 * (len(methods) + 1), 4 * len(sets)), squeeze=False)
    colours = plt.get_cmap("tab20")
    for row, (name, pairs) in enumerate(sets.items()):
        image, gt = pairs[0]
        for col, (method, masks) in enumerate([("ground truth", gt)] +
                                              [(m, results[m][name][0]) for m in methods]):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray")
            overlay = np.zeros(image.shape + (4,))
            for i, m in enumerate(as_masks(masks)):
                overlay[find_boundaries(m, mode="inner")] = colours(i % 20)
            ax.imshow(overlay)
            ax.set_title(f"{name}: {method}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ppp-worms2d", help="package or embedded name")
    parser.add_argument("--n", type=int, default=16, help="images per set (half for "
                                                         "bbbc010-size)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cellpose-env", type=Path, default=None)
    parser.add_argument("--cellpose-minutes", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("runs") / "worms-eval")
    args = parser.parse_args(argv)

    from ppp_zoo.runtime.models import resolve_model
    from ppp_zoo.runtime.segment import load_segmenter

    args.out.mkdir(parents=True, exist_ok=True)
    sets = heldout_sets(args.n, args.seed)
    results: dict[str, dict[str, list]] = {"ppp-worms2d": {}, "otsu+watershed": {}}
    seconds: dict[str, dict[str, float]] = {m: {} for m in results}
    extra = {}
    if args.cellpose_env is not None:  # first: its training takes longest
        from ppp_zoo.config import load_preset
        from ppp_zoo.train import load_training_data

        train_pairs, _ = load_training_data(load_preset("worms2d-general"))
        labels, info = run_cellpose(args.cellpose_env, train_pairs, sets,
                                    args.cellpose_minutes)
        results["cellpose"] = labels
        seconds["cellpose"] = {n: info[n] for n in sets}
        extra["cellpose"] = {"epochs": info["epochs"], "train_seconds": info["train_seconds"],
                             "version": "3.1.1.2", "from_scratch": True,
                             "training_images": len(train_pairs),
                             "scale": "each image's ground-truth diameter (true scale)"}
    segmenter = load_segmenter(resolve_model(args.model), engine="onnx", device="cpu")
    for name, pairs in sets.items():
        scale = "auto" if name == "bbbc010-size" else 1.0
        t = time.perf_counter()
        results["ppp-worms2d"][name] = [segmenter.segment(img, scale=scale).labels
                                        for img, _ in pairs]
        seconds["ppp-worms2d"][name] = (time.perf_counter() - t) / len(pairs)
        t = time.perf_counter()
        results["otsu+watershed"][name] = [otsu_watershed(img, **BASELINE) for img, _ in pairs]
        seconds["otsu+watershed"][name] = (time.perf_counter() - t) / len(pairs)
        print(f"{name}: done", file=sys.stderr, flush=True)
    table = {m: {n: {**score(zip(results[m][n], [g for _, g in sets[n]])),
                     "seconds": round(seconds[m][n], 3)} for n in sets} for m in results}
    print("| set | method | AP@0.5 | AP@0.75 | avAP | s / image |")
    print("|---|---|---|---|---|---|")
    for n in sets:
        for m in results:
            r = table[m][n]
            print(f"| {n} | {m} | {r['ap50']:.3f} | {r['ap75']:.3f} | {r['avAP']:.3f} | "
                  f"{r['seconds']:.2f} |")
    (args.out / "worms.json").write_text(json.dumps(
        {"model": str(args.model), "seed": args.seed, "n": args.n, "results": table,
         "peers": extra, "sets": {"fluorescence": TRAIN_GEOMETRY | {"shape": [320, 320]},
                                  "brightfield": TRAIN_GEOMETRY | {"shape": [320, 320]},
                                  "bbbc010-size": BBBC010_GEOMETRY | {"shape": [520, 696]}}},
        indent=1, default=list) + "\n")
    write_picture(sets, results, args.out / "worms.png")
    print(f"wrote {args.out / 'worms.json'} and {args.out / 'worms.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

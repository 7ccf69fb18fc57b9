"""Does a nuclei model hold up beyond its training image? The model against a classic
Otsu + watershed baseline on sets of other scales and other (synthetic) microscopes.

Sets (AP = TP / (TP + FP + FN), averaged over the images of a set):
  * ``dsb-test``: the right half of the real DSB 2018 sample (columns 256-511, 57 nuclei;
    the default model never saw it);
  * ``dsb-test x0.5`` and ``dsb-test x2``: the same half resampled (image linear and
    anti-aliased, labels nearest), so its nuclei are half / twice as large;
  * ``synth snr S``: ``--n-synth`` images (256 x 256) of
    :func:`ppp_zoo.data.synth_fluorescence_nuclei` at signal-to-noise ratio S, from a seed
    that the training set does not use (``--seed``, default 2026), nuclei 12-48 px across.

The model runs through its package with ONNX Runtime, as ``ppp-zoo segment`` does, once
with ``--scale auto`` and once at the true scale (1, 2 and 0.5 for the DSB sets, which
undo the resampling; for each synthetic image, the training diameter over the median
diameter of its labels; the table shows the median over the set). The baseline is the same on every set, at the image's own resolution:
Gaussian smoothing (sigma 1), Otsu threshold, objects of >= 15 px, distance transform,
peaks at least 4 px apart as watershed markers.

Prints a Markdown table (AP@0.5, AP@0.75, avAP, seconds per image), writes ``--out``
/generalization.json and /generalization.png (one example per set: the model's outlines
in green, the baseline's in magenta), and exits 1 when the model does not beat the
baseline on every set at AP@0.5 and avAP (or ``--scale auto`` loses more than 0.05 AP@0.5
against the true scale).

``--orientations`` instead segments the DSB test half in its 8 mirrors and rotations
(``segment``'s default, and with ``--tta``) and prints each AP@0.5, the lowest and the
spread; then the whole DSB sample alone and as 16 copies in a 2208 x 2208 field of
background (``scripts/eval_field_of_view.py`` measures what makes the difference).

Usage:
  python scripts/eval_generalization.py [--model PACKAGE] [--n-synth 6]
      [--snr 2,4,8,30] [--seed 2026] [--out runs/generalization]
  python scripts/eval_generalization.py --orientations
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ppp_zoo.postprocess.labels import instance_sizes, median_object_diameter

BASELINE = {"sigma": 1.0, "min_size": 15, "min_distance": 4}


def otsu_watershed(image: np.ndarray, sigma: float = 1.0, min_size: int = 15,
                   min_distance: int = 4) -> np.ndarray:
    """The classic baseline: Gaussian, Otsu threshold, small objects removed, distance
    transform peaks as watershed markers."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = gaussian(image.astype(np.float32), sigma, preserve_range=True)
    components, _ = ndimage.label(smooth > threshold_otsu(smooth))
    keep = np.bincount(components.ravel()) >= min_size  # objects of >= min_size pixels
    keep[0] = False
    mask = keep[components]
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=ndimage.label(mask)[0],
                           exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=mask).astype(np.int32)


def resample(image: np.ndarray, labels: np.ndarray, factor: float):
    from skimage.transform import rescale

    img = rescale(image.astype(np.float32), factor, order=1, preserve_range=True,
                  anti_aliasing=factor < 1)
    lab = rescale(labels, factor, order=0, preserve_range=True, anti_aliasing=False)
    return img.astype(np.float32), lab.astype(np.int32)


def build_sets(n_synth: int, snrs: list[float], seed: int) -> dict[str, tuple[list, float | None]]:
    """``{name: (pairs, true scale)}``; the true scale of the DSB sets undoes their
    resampling, that of the synthetic sets (None) comes from their labels."""
    from ppp_zoo.data import dsb_split, load_dsb_sample, synth_fluorescence_nuclei_dataset

    image, gt = dsb_split(*load_dsb_sample())["test"]
    sets = {"dsb-test": ([(image.astype(np.float32), gt.astype(np.int32))], 1.0),
            "dsb-test x0.5": ([resample(image, gt, 0.5)], 2.0),
            "dsb-test x2": ([resample(image, gt, 2.0)], 0.5)}
    for i, snr in enumerate(snrs):
        sets[f"synth snr {snr:g}"] = (synth_fluorescence_nuclei_dataset(
            n_synth, seed=np.random.SeedSequence([seed, i]), shape=(256, 256), snr=snr), None)
    return sets


def score(pairs) -> dict:
    from ppp_zoo.evaluate import evaluate_dataset

    r = evaluate_dataset(pairs)
    return {"ap50": round(r.ap["0.5"], 3), "ap75": round(r.ap["0.75"], 3),
            "avAP": round(r.avAP, 3)}


def run_set(segmenter, trained: float, pairs, true_scale: float | None) -> dict:
    truth = [gt for _, gt in pairs]
    # synthetic images each have their own typical size: a true scale per image
    true_scales = ([true_scale] * len(pairs) if true_scale is not None else
                   [round(trained / median_object_diameter(instance_sizes(gt), 2), 3)
                    for gt in truth])
    out: dict = {"n_images": len(pairs), "true_scale": float(np.median(true_scales)),
                 "examples": {}}
    for name, method in (("model auto", "auto"), ("model true scale", "true"),
                         ("baseline", None)):
        preds, seconds, scales = [], 0.0, []
        for (image, _), true in zip(pairs, true_scales):
            t = time.perf_counter()
            if method is None:
                labels = otsu_watershed(image, **BASELINE)
            else:
                result = segmenter.segment(image, scale=true if method == "true" else "auto")
                labels = result.labels
                scales.append(result.scale)
            seconds += time.perf_counter() - t
            preds.append(labels)
        out[name] = {**score(list(zip(preds, truth))),
                     "seconds_per_image": round(seconds / len(pairs), 3)}
        if scales:
            out[name]["scales"] = [round(s, 3) for s in scales]
        out["examples"][name] = preds[0]
    return out


def write_picture(sets: dict, results: dict, path: Path) -> None:
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    panels = []
    for name, (pairs, _) in sets.items():
        image = pairs[0][0]
        lo, hi = np.percentile(image, (1, 99.8))
        gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.stack([gray] * 3, axis=-1)
        rgb[find_boundaries(results[name]["examples"]["baseline"])] = (1.0, 0.0, 1.0)
        rgb[find_boundaries(results[name]["examples"]["model auto"])] = (0.0, 1.0, 0.0)
        panels.append(resize(rgb, (256, 256 * rgb.shape[1] // rgb.shape[0]), order=0))
    height = max(p.shape[0] for p in panels)
    row = np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0)),
                                 constant_values=1.0) for p in panels], axis=1)
    imsave(path, (row * 255).astype(np.uint8), check_contrast=False)


ORIENTATIONS = {"as is": lambda a: a, "mirror x": lambda a: a[:, ::-1],
                "mirror y": lambda a: a[::-1], "both": lambda a: a[::-1, ::-1],
                "transpose": lambda a: a.T, "rotate 90": lambda a: np.rot90(a, 1),
                "rotate 270": lambda a: np.rot90(a, 3),
                "anti-transpose": lambda a: np.rot90(a, 2).T}
"""The 8 mirrors and rotations of a 2D image (the dihedral group of the square)."""


def orientation_spread(segmenter, tta: bool = False) -> dict:
    """AP of the default ``segment`` (``--scale auto``) on the 8 orientations of the DSB
    test half (the same nuclei, mirrored or rotated), and their spread (max - min)."""
    from ppp_zoo.data import dsb_split, load_dsb_sample

    image, labels = dsb_split(*load_dsb_sample())["test"]
    rows = {}
    for name, turn in ORIENTATIONS.items():
        t = time.perf_counter()
        pred = segmenter.segment(np.ascontiguousarray(turn(image)), scale="auto",
                                 tta=tta).labels
        rows[name] = {**score([(pred, np.ascontiguousarray(turn(labels)))]),
                      "seconds": round(time.perf_counter() - t, 2)}
    ap50 = [r["ap50"] for r in rows.values()]
    return {"orientations": rows, "ap50_min": min(ap50), "ap50_max": max(ap50),
            "ap50_spread": round(max(ap50) - min(ap50), 4),
            "ap75_min": min(r["ap75"] for r in rows.values())}


def field_of_view(segmenter) -> dict:
    """The whole DSB sample alone and as 16 copies in a larger field of background
    (``scripts/eval_field_of_view.py``'s mosaic): AP@0.5 of each."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from eval_field_of_view import _scores, mosaic_case

    from ppp_zoo.data import load_dsb_sample

    image, gt = load_dsb_sample()
    result = mosaic_case(segmenter, image, gt, float(np.percentile(image, 1)))
    result["alone"] = _scores(segmenter.segment(image).labels, gt)[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model package (default: embedded)")
    parser.add_argument("--n-synth", type=int, default=6, help="synthetic images per SNR")
    parser.add_argument("--snr", default="2,4,8,30", help="synthetic SNR levels")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=Path("runs") / "generalization")
    parser.add_argument("--orientations", action="store_true",
                        help="only the 8 orientations of the DSB test half (default and "
                             "--tta) and the whole sample in a larger field")
    args = parser.parse_args(argv)

    import onnxruntime  # noqa: F401 - fail early without it

    from ppp_zoo.runtime.models import resolve_model
    from ppp_zoo.runtime.segment import load_segmenter

    model = resolve_model(args.model)
    segmenter = load_segmenter(model, "onnx", "cpu")
    if args.orientations:
        print("| DSB test half, 8 orientations | " + " | ".join(ORIENTATIONS) +
              " | min | spread | s / image |")
        print("|---" * (len(ORIENTATIONS) + 4) + "|")
        spreads = {}
        for tta in (False, True):
            r = spreads["tta" if tta else "default"] = orientation_spread(segmenter, tta)
            print(f"| segment{' --tta' if tta else ''} (AP@0.5) | " +
                  " | ".join(f"{o['ap50']:.3f}" for o in r["orientations"].values()) +
                  f" | {r['ap50_min']:.3f} | {r['ap50_spread']:.3f} | "
                  f"{np.mean([o['seconds'] for o in r['orientations'].values()]):.2f} |")
        spreads["mosaic"] = field_of_view(segmenter)
        m = spreads["mosaic"]
        print(f"\n| the whole DSB sample | AP@0.5 |\n|---|---|\n| alone | {m['alone']:.3f} |\n"
              f"| 16 copies in a {m['size']} x {m['size']} field of background (mean) | "
              f"{m['mean']:.3f} |\n| the unmirrored copy in that field | {m['per_copy'][0]:.3f} |")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "orientations.json").write_text(json.dumps(spreads, indent=1) + "\n")
        return 0
    trained = segmenter.package.object_diameter
    snrs = [float(s) for s in args.snr.split(",")]
    sets = build_sets(args.n_synth, snrs, args.seed)
    print(f"model {model} (training diameter {trained:.1f} px); baseline {BASELINE}",
          file=sys.stderr)
    results = {}
    for name, (pairs, true_scale) in sets.items():
        t = time.perf_counter()
        results[name] = run_set(segmenter, trained, pairs, true_scale)
        print(f"  {name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)

    header = ("| set | images | true scale | method | AP@0.5 | AP@0.75 | avAP | s / image |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [header]
    failures = []
    for name, r in results.items():
        for method in ("model auto", "model true scale", "baseline"):
            m = r[method]
            shown = method if method != "model auto" else \
                f"model, --scale auto ({', '.join(f'{s:g}' for s in m['scales'][:3])}" + \
                (", ..." if len(m["scales"]) > 3 else "") + ")"
            lines.append(f"| {name} | {r['n_images']} | {r['true_scale']:g} | {shown} | "
                         f"{m['ap50']:.3f} | {m['ap75']:.3f} | {m['avAP']:.3f} | "
                         f"{m['seconds_per_image']:.2f} |")
        auto, base, true = r["model auto"], r["baseline"], r["model true scale"]
        for key in ("ap50", "avAP"):
            if auto[key] <= base[key]:
                failures.append(f"{name}: model {key} {auto[key]} <= baseline {base[key]}")
        if auto["ap50"] < true["ap50"] - 0.05:
            failures.append(f"{name}: --scale auto AP@0.5 {auto['ap50']} is more than 0.05 "
                            f"below the true scale's {true['ap50']}")
    print("\n".join(lines))

    args.out.mkdir(parents=True, exist_ok=True)
    write_picture(sets, results, args.out / "generalization.png")
    for r in results.values():
        r.pop("examples")
    (args.out / "generalization.json").write_text(json.dumps(
        {"model": str(model), "training_diameter": trained, "baseline": BASELINE,
         "n_synth": args.n_synth, "snr": snrs, "seed": args.seed, "sets": results,
         "failures": failures}, indent=1) + "\n")
    print(f"wrote {args.out / 'generalization.json'} and {args.out / 'generalization.png'}",
          file=sys.stderr)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

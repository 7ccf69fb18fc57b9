"""Build the embedded overlapping-worm model ``ppp-worms2d`` reproducibly.

Steps:
  1. train the ``worms2d-general`` preset (seed 0, 80 minutes on 2 CPU cores: 240 synthetic
     256 x 256 images of :func:`ppp_zoo.data.synth_worms` with the wormpose posture model,
     fluorescence and brightfield renderings, 12 of them held out for validation), or take a
     finished run with ``--train-dir``;
  2. choose between its best and last checkpoints, with their assembly thresholds tuned,
     on the validation images only;
  3. score the choice on the held-out sets of ``scripts/eval_worms.py`` (fluorescence and
     brightfield at the training sizes; seeds that training never draws) with overlap-aware
     AP (``--dry-run`` stops here);
  4. export it (TorchScript + ONNX, validated by bioimageio.core and loaded by the
     bioimage.io readers that ilastik 1.4.1 and 1.4.2 ship), segment the held-out sets
     again through the package with ONNX Runtime (the path a user takes) and check that it
     gives the same AP;
  5. write ``ppp_zoo/models/ppp-worms2d.zip``, its entry of ``ppp_zoo/models/index.json``
     (after ``ppp-nuclei2d``, the default) and ``model_specs/ppp-worms2d/`` (rdf.yaml,
     cover, build record).

Usage:
  python scripts/build_worm_model.py [--minutes 80] [--seed 0] [--train-dir RUN] [--dry-run]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_default_model import (  # noqa: E402
    _key,
    _stage_record,
    install_package,
    train_preset,
    update_index,
    write_record,
)
from eval_worms import heldout_sets, score  # noqa: E402

NAME = "ppp-worms2d"
PRESET = "worms2d-general"
TEST_SETS = ("fluorescence", "brightfield")
MAX_BYTES = 25_000_000


def select(candidates: list[Path], output: Path) -> tuple[Path, dict]:
    """Tune the assembly thresholds of each candidate on the run's validation images and
    write the one with the best validation avAP, with its thresholds, to ``output``."""
    import torch

    from ppp_zoo.config import config_from_dict
    from ppp_zoo.model import PatchPerPixNet
    from ppp_zoo.train import load_training_data, tune_thresholds

    results, val = [], None
    for path in candidates:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_from_dict(ckpt["config"])
        if val is None:
            val = load_training_data(cfg)[1]
        model = PatchPerPixNet(**ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model_state"])
        model.eval()
        changes, scores = tune_thresholds(model, cfg, val, torch.device("cpu"))
        print(f"{_key(path)} (iteration {ckpt['iteration']}): validation avAP "
              f"{scores['avAP']:.3f}, AP@0.5 {scores['ap50']:.3f} with "
              f"{changes or 'the preset'} ({len(val)} images)", flush=True)
        results.append((scores["avAP"], path, ckpt, cfg, changes, scores))
    _, path, ckpt, cfg, changes, scores = max(results, key=lambda r: r[0])
    ckpt["assembly"] = cfg.assembly_params(fast=True).replace(**changes).to_dict()
    tuned = {"changes": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in changes.items()}, "val": scores}
    ckpt["tuned"] = tuned
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, output)
    return output, {"validation": f"the run's {len(val)} held-out training images",
                    "candidates": {_key(p): {"iteration": c["iteration"], **s}
                                   for _, p, c, _, _, s in results},
                    "chosen": _key(path), "thresholds": tuned}


def score_sets(segment, sets: dict) -> dict:
    """Overlap-aware AP of ``segment(image) -> masks`` on each set."""
    out = {}
    for name in TEST_SETS:
        t = time.perf_counter()
        preds = [segment(image) for image, _ in sets[name]]
        seconds = (time.perf_counter() - t) / len(preds)
        out[name] = {**score(zip(preds, [m for _, m in sets[name]])),
                     "seconds_per_image": round(seconds, 3), "n_images": len(preds)}
        print(f"  {name}: AP@0.5 {out[name]['ap50']:.3f}  AP@0.75 {out[name]['ap75']:.3f}  "
              f"avAP {out[name]['avAP']:.3f}  ({seconds:.2f} s / image)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=80.0, help="training time limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-dir", type=Path, default=None,
                        help="use this finished run (best.pt, last.pt, metrics.json)")
    parser.add_argument("--train-note", default=None,
                        help="how the --train-dir run was made, if not by this script "
                             "(recorded in build.json)")
    parser.add_argument("--test-seed", type=int, default=2026,
                        help="seed of the held-out sets (scripts/eval_worms.py)")
    parser.add_argument("--n-test", type=int, default=16, help="images per held-out set")
    parser.add_argument("--dry-run", action="store_true",
                        help="stop after scoring the chosen checkpoint (write no package)")
    parser.add_argument("--work", type=Path, default=Path("runs") / NAME)
    args = parser.parse_args(argv)

    import torch

    from ppp_zoo.data.synth import posture_source
    from ppp_zoo.export import export_model
    from ppp_zoo.predict import load_segmenter as checkpoint_segmenter
    from ppp_zoo.runtime.segment import load_segmenter

    if posture_source() != "wormpose":
        raise SystemExit("the worm posture model is missing: pip install --no-deps "
                         "wormpose==1.3.0")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    train_dir = args.train_dir or args.work / "train"
    if args.train_dir is None:
        train_preset(PRESET, args.seed, args.minutes, train_dir)
    record: dict = {
        "name": NAME, "preset": PRESET,
        "data": {"train": f"{PRESET}: ppp_zoo.data.synth_worms, posture model of wormpose "
                          "1.3.0, seed [data] seed",
                 "validation": "[data] val_fraction of the same images",
                 "test": f"scripts/eval_worms.py heldout_sets(n={args.n_test}, "
                         f"seed={args.test_seed}): {', '.join(TEST_SETS)}"},
        "training": _stage_record(train_dir, minutes=args.minutes)}
    if args.train_note:
        record["training"]["note"] = args.train_note
    checkpoint, record["selection"] = select([train_dir / "best.pt", train_dir / "last.pt"],
                                             args.work / "selected.pt")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record["seed"] = ckpt["config"]["train"]["seed"]
    record["training"].update(checkpoint_iteration=int(ckpt["iteration"]),
                              tuned_thresholds=ckpt.get("tuned"), config=ckpt["config"])

    sets = heldout_sets(args.n_test, args.test_seed)
    print("checkpoint on the held-out sets:", flush=True)
    seg = checkpoint_segmenter(checkpoint)
    test = score_sets(lambda image: seg.segment(image).labels, sets)
    if args.dry_run:
        print(f"--dry-run: chosen {checkpoint}; no package written", flush=True)
        return 0

    metrics = {f"synth_worms_heldout_{k}": {m: v[m] for m in ("ap50", "ap75", "avAP")}
               for k, v in test.items()}
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / f"{NAME}.zip"
        t0 = time.perf_counter()
        exported = export_model(
            checkpoint, package, name="PatchPerPix worms 2D (overlapping C. elegans - "
                                      "CPU-trained)",
            nickname=NAME, metrics=metrics, check_readers=True,
            progress=lambda step: print(f"  {step}"),
            description=("PatchPerPix (ppp) instance segmentation of overlapping C. elegans "
                         "worms in 2D fluorescence and brightfield images: one mask per worm, "
                         "crossing worms share their pixels. Trained for 80 minutes on a CPU "
                         "on synthetic worms (real postures from the wormpose posture model; "
                         "crossings, coils, clumps, debris, well edges, uneven illumination) "
                         "with zoom, gamma, blur and noise augmentation. Rescale images so "
                         "that worms measure about 8 pixels wide (ppp-zoo segment --scale "
                         "auto)."))
        print(f"exported {exported.size_bytes / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s; "
              + ", ".join(f"{r.weight_format}: {r.status}" for r in exported.validation),
              flush=True)
        if exported.size_bytes > MAX_BYTES:
            raise SystemExit(f"the package holds {exported.size_bytes} bytes, over {MAX_BYTES}")
        print("package (ONNX Runtime) on the held-out sets:", flush=True)
        runtime = load_segmenter(package, engine="onnx", device="cpu")
        via_package = score_sets(lambda image: runtime.segment(image).labels, sets)
        for name in TEST_SETS:
            if abs(via_package[name]["ap50"] - test[name]["ap50"]) > 0.02:
                raise SystemExit(f"the exported package does not reproduce the checkpoint's "
                                 f"AP on {name}")
        digest, spec = install_package(package, NAME)

    write_record(spec, record, NAME, test, via_package, digest, exported)
    update_index({
        "name": NAME, "file": f"{NAME}.zip",
        "description": "2D overlapping worms, fluorescence and brightfield (PatchPerPix ppp, "
                       "25x25 patches; one mask per worm), trained on synthetic worms",
        "metrics": {f"synth_worms_heldout_{k}": {m: v[m] for m in ("ap50", "ap75", "avAP")}
                    for k, v in via_package.items()},
    })
    print(f"wrote ppp_zoo/models/{NAME}.zip, ppp_zoo/models/index.json and {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training quality on real and synthetic data: AP versus training minutes (prints the figures).

Runs (each a fresh training with a shipped preset, CPU, wall-clock limited):

  nuclei2d     preset ``nuclei2d-cpu``: trained on the left half of the real DSB 2018 sample
               (its last columns are the validation strip), evaluated on the right half
               (57 nuclei, never seen in training) with the exact assembly. Snapshots every
               ``--snapshot`` minutes give the curve of AP versus training time; every
               snapshot is scored with the thresholds tuned on the validation strip at the end.
  worms        preset ``worms-cpu``: synthetic overlapping worms, evaluated with the
               overlap-aware AP on held-out images generated with another seed.

Both variants (``ppp`` and ``ppp+dec``) can be trained one after the other. Writes
``OUT/<run>/`` (checkpoints, curve.png, metrics.json), ``OUT/quality.json`` and
``OUT/quality.png`` (AP@0.5 / AP@0.75 versus minutes).

Usage:
  python scripts/train_quality.py --runs nuclei2d --variants ppp,ppp+dec --minutes 10
  python scripts/train_quality.py --runs worms --minutes 15
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _evaluate_nuclei(ckpt_path: Path, assembly: dict | None) -> dict:
    from ppp_zoo.data import dsb_split, load_dsb_sample
    from ppp_zoo.evaluate import evaluate_image
    from ppp_zoo.postprocess import AssemblyParams
    from ppp_zoo.predict import load_checkpoint, predict_image

    bundle = load_checkpoint(ckpt_path)
    if assembly is not None:
        import dataclasses

        bundle = dataclasses.replace(bundle, assembly=AssemblyParams.from_dict(assembly))
    image, labels = dsb_split(*load_dsb_sample())["test"]
    t0 = time.perf_counter()
    pred = predict_image(bundle, image)
    r = evaluate_image(pred, labels)
    return {"iteration": bundle.iteration, "ap50": round(r.ap["0.5"], 4),
            "ap75": round(r.ap["0.75"], 4), "ap90": round(r.ap["0.9"], 4),
            "avAP": round(r.avAP, 4), "n_pred": r.n_pred, "n_gt": r.n_gt,
            "predict_seconds": round(time.perf_counter() - t0, 2)}


def _evaluate_worms(ckpt_path: Path, assembly: dict | None, n_images: int, seed: int) -> dict:
    import dataclasses

    from ppp_zoo.data.synth import synth_worms_dataset
    from ppp_zoo.evaluate import evaluate_image
    from ppp_zoo.postprocess import AssemblyParams
    from ppp_zoo.predict import load_checkpoint, predict_image

    bundle = load_checkpoint(ckpt_path)
    if assembly is not None:
        bundle = dataclasses.replace(bundle, assembly=AssemblyParams.from_dict(assembly))
    data = bundle.config["data"]
    synth = {k: tuple(v) if isinstance(v, list) else v for k, v in data.get("synth", {}).items()}
    pairs = synth_worms_dataset(n_images, seed=seed, shape=tuple(data["image_size"]), **synth)
    scores = []
    for image, masks in pairs:
        pred = predict_image(bundle, image, fast=True)
        scores.append(evaluate_image(pred, masks, overlapping=True))
    return {"iteration": bundle.iteration,
            "ap50": round(float(np.mean([r.ap["0.5"] for r in scores])), 4),
            "ap75": round(float(np.mean([r.ap["0.75"] for r in scores])), 4),
            "avAP": round(float(np.mean([r.avAP for r in scores])), 4),
            "n_pred": sum(r.n_pred for r in scores), "n_gt": sum(r.n_gt for r in scores)}


def run(name: str, variant: str, minutes: float, snapshot: float, out: Path,
        args: argparse.Namespace) -> dict:
    import torch

    from ppp_zoo.config import config_from_dict, load_preset, merge_config_dicts
    from ppp_zoo.train import train

    torch.set_num_threads(args.threads)
    preset = {"nuclei2d": "nuclei2d-cpu", "worms": "worms-cpu"}[name]
    changes = {"model": {"variant": variant}, "train": {"seed": args.seed}}
    if variant == "ppp+dec":  # a CPU-sized decoder (the paper's decodes 1024 pixels per batch
        # through 64-32-16 feature maps: ~3 s per iteration on 2 cores)
        changes["model"].update(code_shape=[4, 5, 5], decoder_features=[16, 8])
        changes["train"]["decode_samples"] = 256
    cfg = config_from_dict(merge_config_dicts(load_preset(preset).to_dict(), changes))
    run_dir = out / f"{name}-{variant.replace('+', '')}"
    print(f"[{name} {variant}] training for {minutes} min -> {run_dir}", flush=True)
    result = train(cfg, run_dir, max_minutes=minutes, device="cpu", progress=False,
                   snapshot_minutes=snapshot)
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    tuned = best["assembly"]

    def score(path: Path) -> dict:
        if name == "nuclei2d":
            return _evaluate_nuclei(path, tuned)
        return _evaluate_worms(path, tuned, args.test_images, args.test_seed)

    curve = []
    for snap in sorted((run_dir / "snapshots").glob("minute_*.pt")):
        entry = {"minutes": float(snap.stem.split("_")[1]), **score(snap)}
        curve.append(entry)
        print(f"  {entry['minutes']:5.1f} min  it {entry['iteration']:5d}  "
              f"AP@0.5 {entry['ap50']:.3f}  AP@0.75 {entry['ap75']:.3f}", flush=True)
    final = score(run_dir / "best.pt")
    summary = {"run": name, "variant": variant, "minutes": minutes,
               "train_seconds": result.seconds, "iterations": result.iterations,
               "best_iteration": result.best_iteration, "best_val_avAP": result.best_avAP,
               "tuned": best.get("tuned"), "assembly": tuned, "test": final, "curve": curve}
    print(f"[{name} {variant}] best.pt (iteration {final['iteration']}): "
          f"AP@0.5 {final['ap50']:.3f}  AP@0.75 {final['ap75']:.3f}  avAP {final['avAP']:.3f}",
          flush=True)
    return summary


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if not r["curve"]:
            continue
        m = [c["minutes"] for c in r["curve"]]
        label = f"{r['run']} {r['variant']}"
        ax.plot(m, [c["ap50"] for c in r["curve"]], "o-", label=f"{label} AP@0.5")
        ax.plot(m, [c["ap75"] for c in r["curve"]], "s--", label=f"{label} AP@0.75")
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("test AP")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="nuclei2d", help="nuclei2d, worms or both (comma)")
    parser.add_argument("--variants", default="ppp", help="ppp, ppp+dec or both (comma)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training minutes per run (default 10 nuclei2d, 15 worms)")
    parser.add_argument("--snapshot", type=float, default=2.0, help="minutes between snapshots")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-images", type=int, default=12, help="worms: held-out images")
    parser.add_argument("--test-seed", type=int, default=1000, help="worms: their seed")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.runs.split(","):
        minutes = args.minutes or {"nuclei2d": 10.0, "worms": 15.0}[name]
        for variant in args.variants.split(","):
            results.append(run(name, variant, minutes, args.snapshot, args.out, args))
            (args.out / "quality.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "quality.png")
    print(json.dumps([{k: r[k] for k in ("run", "variant", "iterations", "test")}
                      for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

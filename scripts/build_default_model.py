"""Build the embedded default model ``ppp-nuclei2d`` reproducibly (prints its test metrics).

Steps:
  1. train the ``nuclei2d-general`` preset (seed 0, 80 minutes on 2 CPU cores) on the left
     half of the real DSB 2018 sample (its last 48 columns are the validation strip; the
     right half is never read) and 64 synthetic fluorescence nuclei images, or take
     an existing checkpoint of that preset with ``--checkpoint``, or recover the checkpoint
     from an earlier build of the package with ``--from-package`` (its TorchScript weights,
     the training config recorded in ``build.json`` and the package's tuned parameters: the
     same network, re-exported in the current package layout); after training, fine-tune
     from its last weights (``--finetune-minutes``), optionally polish the checkpoint
     chosen so far, or the recovered one (``--polish-minutes``, :data:`POLISH`), and
     choose among the best and last checkpoints of every stage, with their assembly
     thresholds, on validation data only;
  2. score the chosen checkpoint on the right half (57 nuclei) with its own prediction
     (``--dry-run`` stops here);
  3. export it (TorchScript + ONNX, validated by bioimageio.core, and loaded by the
     bioimage.io readers that ilastik 1.4.1 and 1.4.2 ship) with those metrics;
  4. segment the right half again through the exported package with ONNX Runtime (the path
     a user takes) and check that it gives the same AP;
  5. write ``ppp_zoo/models/ppp-nuclei2d.zip`` + ``ppp_zoo/models/index.json`` (shipped as
     package data) and ``model_specs/ppp-nuclei2d/`` (rdf.yaml, cover, build record).

Usage:
  python scripts/build_default_model.py [--minutes 80] [--seed 0] [--checkpoint best.pt]
  python scripts/build_default_model.py --train-dir runs/ppp-nuclei2d/train
      --finetune-dir runs/ppp-nuclei2d/finetune [--polish-from CKPT] [--dry-run]
  python scripts/build_default_model.py --from-package ppp_zoo/models/ppp-nuclei2d.zip
      [--polish-minutes 70 --fine-thresholds]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "ppp-nuclei2d"
PRESET = "nuclei2d-general"


def _scores(labels, gt) -> dict:
    from ppp_zoo.evaluate import evaluate_image

    r = evaluate_image(labels, gt)
    return {"ap50": round(r.ap["0.5"], 4), "ap75": round(r.ap["0.75"], 4),
            "ap90": round(r.ap["0.9"], 4), "avAP": round(r.avAP, 4), "n_pred": r.n_pred,
            "n_gt": r.n_gt}


def recover_checkpoint(package: Path, build_record: Path, output: Path) -> Path:
    """Write a checkpoint (``best.pt``) holding the network of an earlier build of the
    package: the U-Net and numinst head from its TorchScript weights, the patch head from
    the same weights (format 1) or from ``head.npz`` (format 2), and the config, tuned
    thresholds and training record of ``build.json`` and ``config.patchperpix``."""
    import io
    import warnings

    import numpy as np
    import torch

    from ppp_zoo.config import config_from_dict
    from ppp_zoo.model import PatchPerPixNet
    from ppp_zoo.predict import FORMAT_VERSION
    from ppp_zoo.runtime.package import open_package
    from ppp_zoo.train import model_kwargs

    record = json.loads(build_record.read_text())
    cfg = config_from_dict(record["training"]["config"])
    pkg = open_package(package)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(io.BytesIO(pkg.read_bytes(pkg.weights["torchscript"])),
                                  map_location="cpu")
    state = dict(scripted.state_dict())
    if "head" in pkg.config:  # format 2: the patch head ships as head.npz
        with np.load(io.BytesIO(pkg.read_bytes(pkg.config["head"]["source"]))) as head:
            weight = torch.from_numpy(head["weight"])
            state["patch_head.weight"] = weight.reshape(weight.shape + (1,) * cfg.ndim)
            state["patch_head.bias"] = torch.from_numpy(head["bias"])
    kwargs = model_kwargs(cfg)
    net = PatchPerPixNet(**kwargs)
    net.load_state_dict(state)  # strict: every weight accounted for
    ppp = pkg.config
    ckpt = {"format_version": FORMAT_VERSION,
            "model_state": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "model_kwargs": kwargs, "config": cfg.to_dict(),
            "normalize": dict(ppp["normalize"]), "assembly": dict(ppp["assembly"]),
            "iteration": int(record["training"]["checkpoint_iteration"]),
            "history": {"loss": [], "val": []}, "best": None,
            "tuned": record["training"].get("tuned_thresholds"),
            "training": {"object_diameter": ppp["training"]["object_diameter"],
                         "source": cfg.data.source}}
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, output)
    return output


FINETUNE = {"data": {"synth_extra_fraction": 0.3, "synth_val": 8},
            "train": {"lr": 3e-4, "iterations": 1_000_000, "val_every": 500}}
"""Second stage: from the first stage's last weights, a new cosine decay (3e-4 to 1e-5 over
the stage's minutes: the iteration count never binds) with more of the crops (70 %) from
the real DSB training image, validated on the strip plus synthetic images."""


POLISH = {"data": {"synth_extra_fraction": 0.15, "synth_val": 8},
          "train": {"lr": 1e-4, "lr_min": 1e-5, "iterations": 1_000_000, "val_every": 500}}
"""Optional third stage (``--polish-minutes``): from the checkpoint chosen among the first
two stages' ones (or ``--polish-from``, or the network of ``--from-package``), a cosine
decay at a low learning rate (1e-4 to 1e-5) with more of the crops (85 %) from the real DSB
training image, saving the weights :data:`POLISH_SNAPSHOTS` times. Besides its best and
last checkpoints, the average of the weights saved in its second half
(``polish/average.pt``, :func:`average_checkpoints`) is a candidate: averaging the weights
along a low-learning-rate run lands nearer the centre of the basin than any one of them
(the network has no normalisation layers whose statistics would need recomputing)."""

POLISH_SNAPSHOTS = 10
"""Weight snapshots saved by the polish stage (one every ``polish_minutes / 10``)."""


def finetune(start: Path, out_dir: Path, minutes: float, overrides: dict = FINETUNE,
             snapshot_minutes: float | None = None) -> None:
    """Continue training from the weights (and optimiser state, when it holds one) of
    ``start`` with the ``overrides`` of its configuration, as a fresh run in ``out_dir``
    (weights also saved every ``snapshot_minutes`` under ``out_dir/snapshots``)."""
    import torch

    from ppp_zoo.config import config_from_dict, merge_config_dicts
    from ppp_zoo.train import train

    ckpt = torch.load(start, map_location="cpu", weights_only=True)
    cfg = config_from_dict(merge_config_dicts(ckpt["config"], overrides))
    ckpt.update(config=cfg.to_dict(), iteration=0, best=None, history={"loss": [], "val": []})
    ckpt.pop("tuned", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out_dir / "last.pt")
    train(cfg, out_dir, max_minutes=minutes, device="cpu", resume=True,
          progress=sys.stderr.isatty(), snapshot_minutes=snapshot_minutes)


def average_checkpoints(paths: list[Path], output: Path) -> list[int]:
    """Write a checkpoint whose weights are the mean of those of ``paths`` (same network;
    checkpoints of an iteration already seen are skipped); everything else comes from the
    last of them, plus ``averaged_iterations``, which is returned."""
    import torch

    ckpts, seen = [], set()
    for path in paths:  # a snapshot may hold the same weights as last.pt: count them once
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt["iteration"] not in seen:
            seen.add(ckpt["iteration"])
            ckpts.append(ckpt)
    kwargs = ckpts[0]["model_kwargs"]
    if any(c["model_kwargs"] != kwargs for c in ckpts):
        raise ValueError(f"cannot average different networks: {', '.join(map(str, paths))}")
    states = [c["model_state"] for c in ckpts]
    out = {k: v for k, v in ckpts[-1].items() if k not in ("optimizer_state", "rng_state")}
    out["model_state"] = {k: torch.stack([s[k].double() for s in states]).mean(0)
                          .to(states[-1][k].dtype) for k in states[-1]}
    out["averaged_iterations"] = [int(c["iteration"]) for c in ckpts]
    out.pop("tuned", None)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, output)
    return out["averaged_iterations"]


def _second_half_snapshots(run_dir: Path) -> list[Path]:
    """The snapshots saved in the second half of a run, then its ``last.pt``."""
    snaps = sorted((run_dir / "snapshots").glob("minute_*.pt"))
    return snaps[len(snaps) // 2:] + [run_dir / "last.pt"]


def polish(start: Path, work: Path, minutes: float) -> tuple[dict, list[Path]]:
    """The :data:`POLISH` stage from ``start`` in ``work/polish`` (a finished one, with its
    ``metrics.json``, is reused): its ``build.json`` entry and its candidate checkpoints
    (best, last and the average of its second half)."""
    polish_dir = work / "polish"
    print(f"polishing {start} for {minutes} min with {POLISH}", flush=True)
    if not (polish_dir / "metrics.json").exists():
        finetune(start, polish_dir, minutes, POLISH,
                 snapshot_minutes=minutes / POLISH_SNAPSHOTS)
    averaged = polish_dir / "average.pt"
    iterations = average_checkpoints(_second_half_snapshots(polish_dir), averaged)
    entry = _stage_record(polish_dir, minutes=minutes, overrides=POLISH, start=_key(start),
                          averaged_iterations=iterations)
    return entry, [polish_dir / "best.pt", polish_dir / "last.pt", averaged]


FINE_GRID = {"patch_threshold": (0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9),
             "fc_threshold": (0.5, 0.7, 0.9),
             "numinst_t1": (0.5, 0.7, 0.9)}
"""``--fine-thresholds``: the training grid with finer patch thresholds around 0.5, where
the networks of this recipe have their validation optimum (1.6 times the tuning time)."""


def _key(path: Path) -> str:
    """``stage/file`` name of a candidate checkpoint (``best.pt`` exists in every stage)."""
    return f"{path.parent.name}/{path.name}"


def _stage_record(run_dir: Path, **settings) -> dict:
    """``build.json`` entry of a finished training stage: its settings and the run's
    seconds, iterations and best validation iteration and avAP (from ``metrics.json``)."""
    run = json.loads((run_dir / "metrics.json").read_text())
    return {**settings, "seconds": run["seconds"], "iterations": run["iterations"],
            "best_iteration": run["best_iteration"], "best_val_avAP": run["best_avAP"]}


SELECT_VAL = 8
"""Synthetic validation images (``[data] synth_val``) added to the DSB validation strip to
choose the checkpoint and tune its assembly thresholds: the strip alone holds 17 nuclei."""


def select_checkpoint(candidates: list[Path], output: Path,
                      grid: dict | None = None) -> tuple[Path, dict]:
    """Tune the assembly thresholds of each candidate checkpoint on the DSB validation
    strip plus :data:`SELECT_VAL` synthetic validation images (never the test half), and
    write the one with the best validation avAP, with its thresholds, to ``output``."""
    import torch

    from ppp_zoo.config import config_from_dict, merge_config_dicts
    from ppp_zoo.model import PatchPerPixNet
    from ppp_zoo.train import TUNE_GRID, load_training_data, tune_thresholds

    grid = TUNE_GRID if grid is None else grid

    results, val_sets = [], {}
    for path in candidates:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_from_dict(merge_config_dicts(ckpt["config"], {"data": {
            "synth_val": max(SELECT_VAL, ckpt["config"]["data"].get("synth_val", 0))}}))
        key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
        if key not in val_sets:  # the stages share their data: build the validation set once
            val_sets[key] = load_training_data(cfg)[1]
        val = val_sets[key]
        model = PatchPerPixNet(**ckpt["model_kwargs"])
        model.load_state_dict(ckpt["model_state"])
        model.eval()
        changes, scores = tune_thresholds(model, cfg, val, torch.device("cpu"), grid=grid)
        print(f"{_key(path)} (iteration {ckpt['iteration']}): validation avAP "
              f"{scores['avAP']:.3f}, AP@0.5 {scores['ap50']:.3f} with {changes or 'the preset'}"
              f" ({len(val)} images)", flush=True)
        results.append((scores["avAP"], path, ckpt, cfg, changes, scores))
    _, path, ckpt, cfg, changes, scores = max(results, key=lambda r: r[0])
    ckpt["assembly"] = cfg.assembly_params(fast=True).replace(**changes).to_dict()
    tuned = {"changes": {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()},
             "val": scores}
    ckpt["tuned"] = tuned
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, output)
    return output, {"validation": f"DSB strip + {SELECT_VAL} synthetic images "
                                  "(SeedSequence([data.seed, 2]))",
                    "candidates": {_key(p): {"iteration": c["iteration"], **s}
                                   for _, p, c, _, _, s in results},
                    "grid": {k: list(v) for k, v in grid.items()},
                    "chosen": _key(path), "thresholds": tuned}


MODEL_ORDER = ("ppp-nuclei2d", "ppp-worms2d")
"""Order of the embedded models in ``index.json``: the first is ``segment``'s default."""


def install_package(package: Path, name: str) -> tuple[str, Path]:
    """Copy a built package to ``ppp_zoo/models/<name>.zip`` and its ``rdf.yaml``, covers and
    documentation to ``model_specs/<name>/``; returns the package's sha256 and that folder."""
    models = ROOT / "ppp_zoo" / "models"
    models.mkdir(exist_ok=True)
    shutil.copyfile(package, models / f"{name}.zip")
    spec = ROOT / "model_specs" / name
    spec.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(package) as zf:
        for member in zf.namelist():
            if member == "rdf.yaml" or member.endswith((".png", ".md")):
                (spec / Path(member).name).write_bytes(zf.read(member))
    return hashlib.sha256(package.read_bytes()).hexdigest(), spec


def train_preset(preset: str, seed: int, minutes: float, out_dir: Path) -> None:
    """Train ``preset`` with ``[train] seed`` for ``minutes`` on the CPU into ``out_dir``."""
    from ppp_zoo.config import config_from_dict, load_preset, merge_config_dicts
    from ppp_zoo.train import train

    cfg = config_from_dict(merge_config_dicts(load_preset(preset).to_dict(),
                                              {"train": {"seed": seed}}))
    print(f"training {preset} for {minutes} min (seed {seed})", flush=True)
    train(cfg, out_dir, max_minutes=minutes, device="cpu", progress=sys.stderr.isatty())


def write_record(spec: Path, record: dict, name: str, test: dict, via_package: dict,
                 digest: str, exported) -> None:
    """``model_specs/<name>/build.json``: ``record`` with the test scores of the checkpoint
    and of the package (ONNX Runtime) and the package's file, sha256, size and weights."""
    record.update(test_checkpoint=test, test_package_onnx=via_package,
                  package={"file": f"ppp_zoo/models/{name}.zip", "sha256": digest,
                           "size_bytes": exported.size_bytes,
                           "weight_formats": list(exported.weight_formats)})
    (spec / "build.json").write_text(json.dumps(record, indent=1) + "\n")


def update_index(entry: dict) -> None:
    """Put ``entry`` into ``ppp_zoo/models/index.json`` (replacing the model of that name,
    keeping the others), in :data:`MODEL_ORDER`."""
    path = ROOT / "ppp_zoo" / "models" / "index.json"
    entries = json.loads(path.read_text())["models"] if path.exists() else []
    entries = [e for e in entries if e["name"] != entry["name"]] + [entry]
    rank = {n: i for i, n in enumerate(MODEL_ORDER)}
    entries.sort(key=lambda e: rank.get(e["name"], len(rank)))
    path.write_text(json.dumps({"models": entries}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=80.0, help="training time limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"use this {PRESET} checkpoint instead of training")
    parser.add_argument("--from-package", type=Path, default=None,
                        help="recover the checkpoint from this earlier build of the package "
                             "(with model_specs/ppp-nuclei2d/build.json) instead of training")
    parser.add_argument("--train-dir", type=Path, default=None,
                        help="use this finished training run (best.pt, last.pt, metrics.json) "
                             "instead of training")
    parser.add_argument("--finetune-minutes", type=float, default=25.0,
                        help="then continue from last.pt with FINETUNE for this long (0: no)")
    parser.add_argument("--finetune-dir", type=Path, default=None,
                        help="use this finished fine-tuning run instead of fine-tuning")
    parser.add_argument("--polish-minutes", type=float, default=0.0,
                        help="then continue from the checkpoint chosen so far with POLISH for "
                             "this long (0: no)")
    parser.add_argument("--polish-from", type=Path, default=None,
                        help="start the polish stage from this checkpoint (one of the earlier "
                             "stages, chosen on validation) instead of choosing it again")
    parser.add_argument("--fine-thresholds", action="store_true",
                        help="choose checkpoints and thresholds on FINE_GRID instead of the "
                             "training's threshold grid")
    parser.add_argument("--dry-run", action="store_true",
                        help="stop after scoring the chosen checkpoint on the test half "
                             "(write no package)")
    parser.add_argument("--work", type=Path, default=Path("runs") / NAME)
    args = parser.parse_args(argv)
    grid = FINE_GRID if args.fine_thresholds else None
    previous = None
    if args.from_package is not None:
        build_record = ROOT / "model_specs" / NAME / "build.json"
        previous = json.loads(build_record.read_text())
        args.checkpoint = recover_checkpoint(args.from_package, build_record,
                                             args.work / "recovered" / "best.pt")
        print(f"recovered {args.checkpoint} from {args.from_package}", flush=True)

    import torch

    from ppp_zoo.data import dsb_split, load_dsb_sample
    from ppp_zoo.export import export_model
    from ppp_zoo.predict import load_checkpoint, predict_image
    from ppp_zoo.runtime.segment import segment_image

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    record: dict = {"name": NAME, "preset": PRESET, "seed": args.seed,
                    "data": {"train": "DSB 2018 sample (stardist img2d.tif), columns 0-207",
                             "validation": "the same image, columns 208-255",
                             "test": "the same image, columns 256-511 (never read in training)",
                             "synthetic": "[data] synth_extra images of "
                                          "ppp_zoo.data.synth_fluorescence_nuclei, 256 x 256, "
                                          "seeded by SeedSequence([data.seed, 1])"}}
    if args.train_dir is not None or args.checkpoint is None:
        train_dir = args.train_dir or args.work / "train"
        if args.train_dir is None:
            train_preset(PRESET, args.seed, args.minutes, train_dir)
        record["training"] = _stage_record(train_dir, minutes=args.minutes)
        candidates = [train_dir / "best.pt", train_dir / "last.pt"]
        if args.finetune_dir is not None or args.finetune_minutes > 0:
            tuned_dir = args.finetune_dir or args.work / "finetune"
            if args.finetune_dir is None:
                print(f"fine-tuning last.pt for {args.finetune_minutes} min with {FINETUNE}",
                      flush=True)
                finetune(train_dir / "last.pt", tuned_dir, args.finetune_minutes)
            record["finetune"] = _stage_record(tuned_dir, minutes=args.finetune_minutes,
                                               overrides=FINETUNE)
            candidates += [tuned_dir / "best.pt", tuned_dir / "last.pt"]
        if args.polish_minutes > 0:
            start = args.polish_from
            if start is None:
                start, _ = select_checkpoint(candidates, args.work / "selected_before_polish.pt",
                                             grid)
            record["polish"], polished = polish(start, args.work, args.polish_minutes)
            candidates += polished
        checkpoint, record["selection"] = select_checkpoint(candidates,
                                                            args.work / "selected.pt", grid)
    else:
        checkpoint = args.checkpoint
        if previous is not None:
            record["training"] = {k: v for k, v in previous["training"].items()
                                  if k not in ("config", "tuned_thresholds",
                                               "checkpoint_iteration", "iterations_run")}
            record["training"]["recovered_from"] = str(args.from_package.name)
            for stage in ("finetune", "selection"):  # how the recovered network was made
                if stage in previous:
                    record[f"recovered_{stage}"] = previous[stage]
        else:
            record["training"] = {"checkpoint": checkpoint.name}
        if args.polish_minutes > 0:  # polish the given network; choose it or a polished one
            record["polish"], polished = polish(checkpoint, args.work, args.polish_minutes)
            checkpoint, record["selection"] = select_checkpoint(
                [checkpoint] + polished, args.work / "selected.pt", grid)
    bundle = load_checkpoint(checkpoint)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    record["seed"] = bundle.config.get("train", {}).get("seed")
    record["training"].update(
        checkpoint_iteration=bundle.iteration,
        iterations_run=(previous["training"]["iterations_run"] if previous else
                        len(ckpt.get("history", {}).get("loss", []))),
        tuned_thresholds=ckpt.get("tuned"), config=bundle.config)
    if bundle.config.get("data", {}).get("source") != "dsb-sample":
        raise SystemExit(f"{checkpoint}: not trained on the DSB sample (preset {PRESET})")

    image, gt = dsb_split(*load_dsb_sample())["test"]
    test = _scores(predict_image(bundle, image), gt)
    print(f"checkpoint on the test half: AP@0.5 {test['ap50']:.3f}  AP@0.75 {test['ap75']:.3f}  "
          f"AP@0.9 {test['ap90']:.3f}", flush=True)
    if args.dry_run:
        print(f"--dry-run: chosen {checkpoint}; no package written", flush=True)
        return 0
    metrics = {"dsb2018_sample_test_half": {**test, "split": "DSB 2018 sample (stardist "
                                            "img2d.tif), right half, columns 256-511"}}

    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / f"{NAME}.zip"
        t0 = time.perf_counter()
        exported = export_model(
            checkpoint, package, name="PatchPerPix nuclei 2D (fluorescence - CPU-trained)",
            nickname=NAME,
            metrics=metrics, check_readers=True, progress=lambda step: print(f"  {step}"),
            description=("PatchPerPix (ppp) nuclei instance segmentation for 2D fluorescence "
                         "images, trained for 80 minutes on a CPU on the left half of the DSB "
                         "2018 sample shipped with stardist and on synthetic fluorescence "
                         "nuclei of many sizes, textures, blurs and noise levels, with zoom, "
                         "gamma, blur and noise augmentation. Rescale images so that nuclei "
                         "measure about 23 pixels across (ppp-zoo segment --scale auto)."))
        print(f"exported {exported.size_bytes / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s; "
              + ", ".join(f"{r.weight_format}: {r.status}" for r in exported.validation),
              flush=True)
        via_package = _scores(segment_image(package, image, engine="onnx", device="cpu").labels,
                              gt)
        print(f"package (ONNX Runtime) on the test half: AP@0.5 {via_package['ap50']:.3f}  "
              f"AP@0.75 {via_package['ap75']:.3f}", flush=True)
        if abs(via_package["ap50"] - test["ap50"]) > 0.02:
            raise SystemExit("the exported package does not reproduce the checkpoint's AP")

        digest, spec = install_package(package, NAME)

    if previous is not None and args.polish_minutes <= 0:
        # the same network re-exported: its history stays as it was, with the new package
        record = {**previous, "repackaged": {
            "from": args.from_package.name,
            "what": "the same network re-exported in the current package layout"}}
    write_record(spec, record, NAME, test, via_package, digest, exported)
    update_index({
        "name": NAME, "file": f"{NAME}.zip",
        "description": "2D fluorescence nuclei (PatchPerPix ppp, 17x17 patches), trained on "
                       "the left half of the DSB 2018 sample and synthetic fluorescence nuclei",
        "metrics": {"dsb2018_sample_test_half": {k: via_package[k]
                                                 for k in ("ap50", "ap75", "ap90", "avAP")}},
    })
    print(f"wrote ppp_zoo/models/{NAME}.zip, ppp_zoo/models/index.json and {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Speed and memory of the instance assembly (prints the figures).

Cases (each measured in a fresh process, so peak RSS is that case's own):
  dsb-exact / dsb-fast   the 512x512 DSB sample, 25x25 GT patches, both partitions
  naive-consensus        baseline: every vote accumulated into a dense per-pixel array over
                         all (2p-1)^2 offsets (sum + count), as a straightforward kernel would
  worms-41               one 520x696 synthetic worm image, 41x41 patches, overlapping mode
                         (fast mode, strides 2 and 3)
  nuclei3d               the 31x61x57 3D sample, 9x9x9 patches
  worms-41-exact         the same worm image in exact mode (the paper's setting; minutes before
                         the line-organised kernels)
  first-call             compile time of the kernels with an empty numba cache
  cli-startup            wall time of `ppp-zoo --help` and of a small `ppp-zoo postprocess`
  blockwise-N            an N x N mosaic of the DSB sample (N * 512 pixels a side), GT patches
                         memory-mapped from disk, assembled in 256x256 blocks (fast mode):
                         time and peak RSS grow with the area and the block, not the image

With ``--baseline REF`` (a git commit or branch) every timed case is run a second time, in
its own process, with ``ppp_zoo/postprocess`` as it was at REF (extracted with ``git
archive`` into ``~/.cache/ppp_zoo/bench-baseline``, where its numba cache stays warm), and each
figure is printed beside the baseline's, together with whether both gave the same labels.
Times are the median of ``--repeat`` runs after one warm-up run.

``--baseline 0012eb7`` compares with the kernels before the row-by-row consensus and the
per-node edge weights. Measured that way on 2 shared cores (median of 3; worms exact once),
seconds, new (baseline): DSB exact cc 5.4 (11.4), mws 7.4 (12.9); DSB fast cc 1.7 (4.1),
mws 1.5 (4.1); 3D exact 13.6 (90.1), fast 0.87 (2.2); worms fast2 7.1 (19.4), fast3 3.2
(8.2); worms exact 35.0 (339.5); labels identical in every case, peak RSS lower in every case.

``--baseline 9eabc1a`` compares with the consensus pass before its x tiles and its bands
shared by work, and the edge weights before the raster-order visit. On a slower 2-core
machine (once each), seconds, new (baseline): worms exact 26.2 (42.5), its consensus+scores
18.2 (32.3) and graph 7.1 (9.3); worms fast2 5.9 (6.8), fast3 2.5 (2.7); the cases with
smaller patches (DSB 25x25, 3D 9x9x9) within that machine's run-to-run noise of about 10 %;
labels identical and peak RSS within 1 % in every case.

With ``--device cuda`` the timed cases run the assembly kernels on the GPU (numba's CUDA
target; the baseline always runs on the CPU), so that one command on a GPU machine measures
the GPU path against the CPU kernels of the same commit and checks that the labels are the
same:

    python scripts/bench_postprocess.py --cases dsb-exact,worms-41-exact --device cuda --baseline HEAD

Usage:  python scripts/bench_postprocess.py [--cases dsb-exact,dsb-fast,...] [--repeat 3]
                                            [--baseline REF] [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CASES = ["dsb-exact", "dsb-fast", "naive-consensus", "worms-41", "worms-41-exact", "nuclei3d",
         "first-call", "cli-startup", "blockwise-1", "blockwise-2"]
#: cases that time :func:`assemble` and can be compared with a baseline package
TIMED = ("dsb-exact", "dsb-fast", "worms-41", "worms-41-exact", "nuclei3d")
BASELINE_NAME = "ppp_postprocess_baseline"


def _postprocess():
    """The assembly package under test: ``ppp_zoo.postprocess``, or the baseline copy."""
    folder = os.environ.get("PPP_BENCH_PACKAGE")
    if not folder:
        import ppp_zoo.postprocess as pkg

        return pkg
    import importlib.util

    init = os.path.join(folder, BASELINE_NAME, "__init__.py")
    spec = importlib.util.spec_from_file_location(
        BASELINE_NAME, init, submodule_search_locations=[os.path.dirname(init)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[BASELINE_NAME] = pkg
    spec.loader.exec_module(pkg)
    return pkg


def _baseline_folder(ref: str) -> str:
    """Extract ``ppp_zoo/postprocess`` at git ``ref`` (once) and return its parent folder."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sha = subprocess.run(["git", "-C", root, "rev-parse", ref], check=True, capture_output=True,
                         text=True).stdout.strip()
    folder = os.path.join(os.path.expanduser("~/.cache/ppp_zoo/bench-baseline"), sha[:12])
    target = os.path.join(folder, BASELINE_NAME)
    if not os.path.isdir(target):
        os.makedirs(folder, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=folder)
        archive = subprocess.run(["git", "-C", root, "archive", sha, "ppp_zoo/postprocess"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        os.rename(os.path.join(tmp, "ppp_zoo", "postprocess"), target)
        shutil.rmtree(tmp)
    return folder


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def _rss_anon_gb() -> float:
    """Current anonymous (private) resident memory from /proc/self/status, in GiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def _time_assembly(numinst, patches, params, labels, repeat, overlapping=False, name=""):
    """Median seconds (and the median run's step timings) of ``repeat`` runs after a warm-up
    on a crop (which loads the compiled kernels).

    The labels are saved to ``$PPP_BENCH_DIR/<name>.npy`` (when set) for the comparison with
    the baseline.
    """
    import numpy as np

    from ppp_zoo.evaluate import evaluate_image

    pkg = _postprocess()
    params = pkg.AssemblyParams(**params.to_dict())
    # $PPP_BENCH_DEVICE (--device): where the kernels run; a package without the argument
    # runs on the CPU
    device = os.environ.get("PPP_BENCH_DEVICE", "cpu")
    kw = {"device": device} if "device" in inspect.signature(pkg.assemble).parameters else {}
    if device != "cpu" and not kw:
        raise RuntimeError(f"this ppp_zoo.postprocess has no device argument (--device {device})")
    crop = (slice(None),) + (slice(0, 64),) * (patches.ndim - 1)
    pkg.assemble(None if numinst is None else numinst[crop], patches[crop], params,
                 **kw)  # JIT warm-up
    runs = []
    for _ in range(max(repeat, 1)):
        t0 = time.perf_counter()
        result = pkg.assemble(numinst, patches, params, return_result=True, **kw)
        runs.append((time.perf_counter() - t0, result))
    runs.sort(key=lambda run: run[0])
    seconds, result = runs[len(runs) // 2]
    if os.environ.get("PPP_BENCH_DIR") and name:
        np.save(os.path.join(os.environ["PPP_BENCH_DIR"], f"{name}.npy"), result.labels)
    ev = evaluate_image(result.labels, labels, overlapping=overlapping)
    return {"seconds": round(seconds, 3), "all_seconds": [round(r[0], 3) for r in runs],
            "device": getattr(result, "device", "cpu"),
            "steps": result.summary()["timings"], "n_instances": result.n_instances,
            "n_selected": result.n_selected, "n_edges": result.n_edges,
            "ap50": round(ev.ap["0.5"], 4), "ap75": round(ev.ap["0.75"], 4),
            "ap90": round(ev.ap["0.9"], 4), "avap": round(ev.avAP, 4)}


def _naive_consensus(numinst, patches, th):
    """Dense baseline: a (2p-1)^2 offset array per pixel, every vote added (2D)."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def kernel(patches, fg, th, bg, csum, ccnt):
        P = patches.shape[0]
        py = int(np.sqrt(P))
        r = py // 2
        Y, X = fg.shape
        W = 2 * py - 1
        th2 = th * th
        for cy in prange(r, Y - r):
            for cx in range(r, X - r):
                if not fg[cy, cx]:
                    continue
                for k1 in range(P):
                    p1 = patches[k1, cy, cx]
                    y1, x1 = cy + k1 // py - r, cx + k1 % py - r
                    if p1 <= th or not fg[y1, x1]:
                        continue
                    for k2 in range(P):
                        if k2 == k1:
                            continue
                        y2, x2 = cy + k2 // py - r, cx + k2 % py - r
                        if not fg[y2, x2]:
                            continue
                        p2 = patches[k2, cy, cx]
                        o = (y2 - y1 + py - 1) * W + (x2 - x1 + py - 1)
                        if p2 > th:
                            csum[o, y1, x1] += (p1 * p2 - th2) / (1 - th2)
                            ccnt[o, y1, x1] += 1
                        elif p2 < bg:
                            csum[o, y1, x1] -= (p1 * (1 - p2) - th2) / (1 - th2)
                            ccnt[o, y1, x1] += 1

    P = patches.shape[0]
    py = int(round(P ** 0.5))
    W = 2 * py - 1
    fg = numinst[1] > 0.5
    csum = np.zeros((W * W,) + fg.shape, np.float32)
    ccnt = np.zeros((W * W,) + fg.shape, np.float32)
    small = patches[:, :64, :64].copy()
    kernel(small, fg[:64, :64], np.float32(th), np.float32(1 - th), csum[:, :64, :64].copy(),
           ccnt[:, :64, :64].copy())  # compile
    t0 = time.perf_counter()
    kernel(patches, fg, np.float32(th), np.float32(1 - th), csum, ccnt)
    return time.perf_counter() - t0


def run_case(case: str, repeat: int) -> dict:
    import numpy as np

    from ppp_zoo.data.targets import instance_targets
    from ppp_zoo.postprocess import AssemblyParams

    if case in ("dsb-exact", "dsb-fast", "naive-consensus"):
        from ppp_zoo.data.sample import load_dsb_sample

        _, labels = load_dsb_sample()
        numinst, patches = instance_targets(labels, (25, 25))
        if case == "naive-consensus":
            out = {"consensus_seconds": round(_naive_consensus(numinst, patches, 0.9), 3)}
        else:
            out = {}
            for partition in ("cc", "mws"):
                params = AssemblyParams(patchshape=(25, 25), partition=partition,
                                        fast=case == "dsb-fast")
                out[partition] = _time_assembly(numinst, patches, params, labels, repeat,
                                                name=f"{case}-{partition}")
    elif case in ("worms-41", "worms-41-exact"):
        from ppp_zoo.data.synth import synth_worms

        _, masks = synth_worms(shape=(520, 696), seed=0)
        numinst, patches = instance_targets(masks, (41, 41), overlapping=True)
        out = {}
        for stride in ((1,) if case.endswith("exact") else (2, 3)):
            params = AssemblyParams(patchshape=(41, 41), overlapping=True, fast=stride > 1,
                                    fast_stride=max(stride, 2))
            key = "exact" if stride == 1 else f"fast{stride}"
            out[key] = _time_assembly(numinst, patches, params, masks, repeat,
                                      overlapping=True, name=f"{case}-{key}")
    elif case == "nuclei3d":
        from ppp_zoo.data.sample import load_nuclei3d_sample

        _, labels = load_nuclei3d_sample()
        numinst, patches = instance_targets(labels, (9, 9, 9))
        out = {}
        for fast in (False, True):
            params = AssemblyParams(patchshape=(9, 9, 9), patch_threshold=0.5, fast=fast)
            key = "fast" if fast else "exact"
            out[key] = _time_assembly(numinst, patches, params, labels, repeat,
                                      name=f"{case}-{key}")
    elif case.startswith("prepare-blockwise-"):
        from ppp_zoo.data.sample import load_dsb_sample

        n = int(case.rsplit("-", 1)[1])
        _, labels = load_dsb_sample()
        tiles = [labels + (labels > 0) * (i * 1000) for i in range(n * n)]
        mosaic = np.block([[tiles[i * n + j] for j in range(n)] for i in range(n)])
        numinst, patches = instance_targets(mosaic, (25, 25))
        folder = os.environ["PPP_BENCH_DIR"]
        np.save(f"{folder}/labels.npy", mosaic)
        np.save(f"{folder}/numinst.npy", numinst)
        np.save(f"{folder}/patches.npy", patches)
        out = {"pixels": int(mosaic.size)}
    elif case.startswith("blockwise-"):
        from ppp_zoo.evaluate import evaluate_image
        from ppp_zoo.postprocess import assemble_blockwise

        folder = os.environ["PPP_BENCH_DIR"]
        numinst = np.load(f"{folder}/numinst.npy", mmap_mode="r")
        patches = np.load(f"{folder}/patches.npy", mmap_mode="r")
        labels = np.load(f"{folder}/labels.npy")
        params = AssemblyParams(patchshape=(25, 25), partition="mws", fast=True)
        anon = []  # private memory after each block (mapped input pages are file-backed)
        t0 = time.perf_counter()
        pred = assemble_blockwise(numinst, patches, params, block_shape=(256, 256),
                                  progress=lambda done, total: anon.append(_rss_anon_gb()))
        ev = evaluate_image(pred, labels)
        out = {"pixels": int(labels.size), "seconds": round(time.perf_counter() - t0, 2),
               "n_instances": int(pred.max()), "ap90": round(ev.ap["0.9"], 4),
               "input_on_disk_gb": round(patches.nbytes / 1024**3, 2),
               "max_private_gb_between_blocks": round(max(anon), 3)}
    elif case == "first-call":
        labels = np.zeros((48, 48), np.int32)
        labels[5:20, 5:20], labels[20:40, 10:30] = 1, 2
        numinst, patches = instance_targets(labels, (9, 9))
        t0 = time.perf_counter()
        from ppp_zoo.postprocess import assemble

        assemble(numinst, patches, AssemblyParams(patchshape=(9, 9)))
        out = {"first_call_seconds": round(time.perf_counter() - t0, 2)}
    else:
        raise ValueError(case)
    out["peak_rss_gb"] = round(_peak_rss_gb(), 3)
    return out


def _cli_startup() -> dict:
    import numpy as np

    from ppp_zoo.data.targets import instance_targets
    from ppp_zoo.io import write_npz

    with tempfile.TemporaryDirectory() as tmp:
        labels = np.zeros((64, 64), np.int32)
        labels[5:25, 5:25], labels[30:60, 20:50] = 1, 2
        numinst, patches = instance_targets(labels, (9, 9))
        write_npz(f"{tmp}/o.npz", numinst=numinst, patches=patches, patchshape=np.array([9, 9]))
        exe = os.path.join(os.path.dirname(sys.executable), "ppp-zoo")
        out = {}
        for name, cmd in [("help", [exe, "--help"]),
                          ("postprocess_64x64", [exe, "postprocess", f"{tmp}/o.npz", "-o",
                                                 f"{tmp}/p.tif"])]:
            subprocess.run(cmd, check=True, capture_output=True)  # warm the cache
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            out[name + "_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _run_timed(case: str, repeat: int, folder: str, package: str | None,
               device: str = "cpu") -> dict:
    """One timed case in a fresh process (labels saved under ``folder``); the baseline
    ``package`` always on the CPU."""
    env = dict(os.environ, PPP_BENCH_DIR=folder, PPP_BENCH_DEVICE="cpu" if package else device)
    env.pop("PPP_BENCH_PACKAGE", None)
    if package:
        env["PPP_BENCH_PACKAGE"] = package
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--repeat", str(repeat)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare(case: str, new: dict, old: dict, new_dir: str, old_dir: str) -> list[str]:
    """Lines with each figure of ``new`` beside the baseline's, and the label comparison."""
    import numpy as np

    lines = []
    for key, run in new.items():
        if not isinstance(run, dict) or key not in old:
            continue
        base = old[key]
        name = f"{case}-{key}"
        same = np.array_equal(np.load(os.path.join(new_dir, f"{name}.npy")),
                              np.load(os.path.join(old_dir, f"{name}.npy")))
        steps = ", ".join(f"{k} {v:.2f}" for k, v in run["steps"].items() if v >= 0.005)
        base_steps = ", ".join(f"{k} {v:.2f}" for k, v in base["steps"].items() if v >= 0.005)
        lines.append(f"  {key}: {run['seconds']:.2f} s on {run.get('device', 'cpu')} "
                     f"(baseline {base['seconds']:.2f} s on {base.get('device', 'cpu')}, "
                     f"{base['seconds'] / run['seconds']:.1f}x faster); labels identical: {same}; "
                     + ", ".join(f"{name} {run[k]} (baseline {base.get(k)})" for name, k in
                                 (("AP50", "ap50"), ("AP75", "ap75"), ("avAP", "avap"))
                                 if k in run))
        lines.append(f"    steps: {steps}")
        lines.append(f"    baseline steps: {base_steps}")
    lines.append(f"  peak RSS {new['peak_rss_gb']} GB (baseline {old['peak_rss_gb']} GB)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", default=None,
                    help="git ref whose ppp_zoo/postprocess is timed beside the current one")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="where the timed cases run the assembly kernels (the baseline: CPU)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeat)))
        return
    import numba

    print(f"# threads: {numba.get_num_threads()}, cpus: {os.cpu_count()}")
    base_pkg = _baseline_folder(args.baseline) if args.baseline else None
    if base_pkg:
        print(f"# baseline: ppp_zoo/postprocess at {args.baseline} ({os.path.basename(base_pkg)})")
    results = {}
    for case in args.cases.split(","):
        if case == "cli-startup":
            results[case] = _cli_startup()
        elif case in TIMED:
            with tempfile.TemporaryDirectory() as new_dir, tempfile.TemporaryDirectory() as old_dir:
                try:
                    results[case] = _run_timed(case, args.repeat, new_dir, None, args.device)
                    print(f"{case}: {json.dumps(results[case])}", flush=True)
                    if base_pkg:
                        old = _run_timed(case, args.repeat, old_dir, base_pkg)
                        results[case + "@baseline"] = old
                        print(f"{case}@baseline: {json.dumps(old)}")
                        print("\n".join(_compare(case, results[case], old, new_dir, old_dir)),
                              flush=True)
                except RuntimeError as err:
                    print(f"{case}: FAILED\n{err}")
            continue
        elif case.startswith("blockwise-"):
            with tempfile.TemporaryDirectory() as folder:
                env = dict(os.environ, PPP_BENCH_DIR=folder)
                n = case.rsplit("-", 1)[1]
                subprocess.run([sys.executable, __file__, "--case", f"prepare-blockwise-{n}"],
                               check=True, capture_output=True, env=env)
                proc = subprocess.run([sys.executable, __file__, "--case", case], env=env,
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{case}: FAILED\n{proc.stderr[-2000:]}")
                    continue
                results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            env = dict(os.environ)
            if case == "first-call":
                env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="ppp-bench-cache-")
            proc = subprocess.run([sys.executable, __file__, "--case", case, "--repeat",
                                   str(args.repeat)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{case}: FAILED\n{proc.stderr[-2000:]}")
                continue
            results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{case}: {json.dumps(results[case])}", flush=True)
    if "dsb-exact" in results and "naive-consensus" in results:
        steps = results["dsb-exact"]["cc"]["steps"]
        ours = sum(v for k, v in steps.items() if k.startswith(("consensus", "scores")))
        base = results["naive-consensus"]["consensus_seconds"]
        print(f"consensus (+ scores) vs naive dense consensus: {base:.2f} s / {ours:.2f} s = "
              f"{base / ours:.1f}x faster; peak RSS {results['naive-consensus']['peak_rss_gb']} GB "
              f"vs {results['dsb-exact']['peak_rss_gb']} GB (whole assembly, both partitions)")
    if "blockwise-1" in results and "blockwise-2" in results:
        a, b = results["blockwise-1"], results["blockwise-2"]
        print(f"blockwise: 4x the area -> {b['seconds'] / a['seconds']:.1f}x the time, "
              f"private memory between blocks {a['max_private_gb_between_blocks']} -> "
              f"{b['max_private_gb_between_blocks']} GB, peak RSS {a['peak_rss_gb']} -> "
              f"{b['peak_rss_gb']} GB (includes the memory-mapped input pages: "
              f"{a['input_on_disk_gb']} -> {b['input_on_disk_gb']} GB on disk)")
    if "dsb-exact" in results and "dsb-fast" in results:
        for p in ("cc", "mws"):
            e, f = results["dsb-exact"][p], results["dsb-fast"][p]
            print(f"{p}: exact {e['seconds']} s AP50 {e['ap50']} | fast {f['seconds']} s "
                  f"AP50 {f['ap50']} (speed-up {e['seconds'] / f['seconds']:.1f}x)")


if __name__ == "__main__":
    main()

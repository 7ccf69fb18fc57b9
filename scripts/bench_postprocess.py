"""Speed and memory of the instance assembly (prints the figures).

Cases (each measured in a fresh process, so peak RSS is that case's own):
  dsb-exact / dsb-fast   the 512x512 DSB sample, 25x25 GT patches, both partitions
  naive-consensus        baseline: every vote accumulated into a dense per-pixel array over
                         all (2p-1)^2 offsets (sum + count), as a straightforward kernel would
  worms-41               one 520x696 synthetic worm image, 41x41 patches, overlapping mode
                         (fast mode, strides 2 and 3)
  nuclei3d               the 31x61x57 3D sample, 9x9x9 patches
  first-call             compile time of the kernels with an empty numba cache
  cli-startup            wall time of `ppp-zoo --help` and of a small `ppp-zoo postprocess`
  blockwise-N            an N x N mosaic of the DSB sample (N * 512 pixels a side), GT patches
                         memory-mapped from disk, assembled in 256x256 blocks (fast mode):
                         time and peak RSS grow with the area and the block, not the image

Usage:  python scripts/bench_postprocess.py [--cases dsb-exact,dsb-fast,...] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CASES = ["dsb-exact", "dsb-fast", "naive-consensus", "worms-41", "nuclei3d", "first-call",
         "cli-startup", "blockwise-1", "blockwise-2"]


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


def _time_assembly(numinst, patches, params, labels, repeat, overlapping=False):
    from ppp_zoo.evaluate import evaluate_image
    from ppp_zoo.postprocess import assemble

    assemble(numinst, patches, params)  # JIT warm-up (loads the cache)
    best, result = None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = assemble(numinst, patches, params, return_result=True)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    ev = evaluate_image(result.labels, labels, overlapping=overlapping)
    return {"seconds": round(best, 3), "steps": result.summary()["timings"],
            "n_instances": result.n_instances, "ap50": round(ev.ap["0.5"], 4),
            "ap90": round(ev.ap["0.9"], 4)}


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
                out[partition] = _time_assembly(numinst, patches, params, labels, repeat)
    elif case == "worms-41":
        from ppp_zoo.data.synth import synth_worms

        _, masks = synth_worms(shape=(520, 696), seed=0)
        numinst, patches = instance_targets(masks, (41, 41), overlapping=True)
        out = {}
        # exact mode takes minutes here (see the note in README), so the fast strides only
        for stride in (2, 3):
            params = AssemblyParams(patchshape=(41, 41), overlapping=True, fast=True,
                                    fast_stride=stride)
            out[f"fast{stride}"] = _time_assembly(numinst, patches, params, masks, 1,
                                                  overlapping=True)
    elif case == "nuclei3d":
        from ppp_zoo.data.sample import load_nuclei3d_sample

        _, labels = load_nuclei3d_sample()
        numinst, patches = instance_targets(labels, (9, 9, 9))
        out = {}
        for fast in (False, True):
            params = AssemblyParams(patchshape=(9, 9, 9), patch_threshold=0.5, fast=fast)
            out["fast" if fast else "exact"] = _time_assembly(numinst, patches, params, labels,
                                                              repeat)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeat)))
        return
    import numba

    print(f"# threads: {numba.get_num_threads()}, cpus: {os.cpu_count()}")
    results = {}
    for case in args.cases.split(","):
        if case == "cli-startup":
            results[case] = _cli_startup()
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
        ours = results["dsb-exact"]["cc"]["steps"]["consensus+scores"]
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

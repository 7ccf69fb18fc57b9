"""Benchmark of block-wise segmentation on dask.distributed (``ppp_zoo.runtime.distributed``).

2D: a mosaic of the DSB 2018 sample (``--size`` pixels square, stored as OME-Zarr),
segmented with the default model by 1 and by 2 workers. 3D: a volume tiled from the 3D
nuclei sample (``--size3d`` as ZxYxX), GT patches assembled block by block (oracle: the
postprocess path). Prints wall time, megapixels per minute, peak memory per worker and
the 1-worker / 2-worker time ratio.

    python scripts/bench_distributed.py --size 2048 --block 1024 --size3d 32x192x192
    python scripts/bench_distributed.py --merge-labels 1e6,1e7   # the merge pass alone

``--merge-labels`` times the global merge (``merge_pairs``: union-find over the instances
of all blocks) on synthetic block counts and face pairs at each number of labels (4096
blocks; 10 % of the instances touch a face and are paired with a neighbour's), and prints
seconds, peak memory growth and the ratio of time per label against the first size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _mosaic(tile: np.ndarray, shape) -> np.ndarray:
    reps = [-(-s // t) for s, t in zip(shape, tile.shape)]
    # flip alternate tiles so that neighbours join without a straight seam of copies
    return np.tile(tile, reps)[tuple(slice(0, s) for s in shape)]


def _peak_rss(client) -> float:
    import psutil

    def peak():
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)

    del psutil
    return max(client.run(peak).values())


class Oracle3D:
    def __init__(self, patchshape, fast: bool = False):
        from ppp_zoo.postprocess import AssemblyParams

        self.params = AssemblyParams(patchshape=patchshape, fast=fast)

    def __call__(self, labels):
        from ppp_zoo.data.targets import instance_targets
        from ppp_zoo.postprocess import assemble

        return assemble(*instance_targets(labels, self.params.patchshape), self.params)


def _on_cluster(n: int, run):
    """``run(client)`` on a fresh LocalCluster of ``n`` workers: its result, the wall time
    and the peak memory per worker (flagged when dask replaced workers during the run, as
    their peak is then lost)."""
    import os

    cluster, client = _cluster(n)
    try:
        pids = set(client.run(os.getpid).values())
        t = time.perf_counter()
        result = run(client)
        wall = time.perf_counter() - t
        memory = f"peak memory per worker {_peak_rss(client):.2f} GiB"
        gone = len(pids - set(client.run(os.getpid).values()))
        if gone:
            memory += f" ({gone} worker(s) restarted by dask: peak memory unknown)"
    finally:
        client.close()
        cluster.close()
    return result, wall, memory


def _cluster(n):
    import distributed

    cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None,
                                       silence_logs=40,
                                       env={"NUMBA_NUM_THREADS": str(max(1, 2 // n)),
                                            "OMP_NUM_THREADS": "1"})
    return cluster, distributed.Client(cluster)


def bench_merge(sizes: list[int], n_blocks: int = 4096) -> None:
    """Seconds of ``merge_pairs`` at each number of labels (face pairs: 10 % of them)."""
    import resource

    from ppp_zoo.runtime.distributed import merge_pairs

    first = None
    for total in sizes:
        rng = np.random.default_rng(0)
        counts = np.full(n_blocks, total // n_blocks, np.int64)
        counts[: total - counts.sum()] += 1
        k = total // 10
        block = rng.integers(0, n_blocks - 1, size=k)
        pairs = np.stack([block, rng.integers(1, counts[block] + 1), block + 1,
                          rng.integers(1, counts[block + 1] + 1)], axis=1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        ids = merge_pairs(counts, pairs)
        seconds = time.perf_counter() - t
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
        per_label = seconds / total
        first = first or per_label
        print(f"merge {total:.0e} labels ({k:.0e} face pairs, {n_blocks} blocks): "
              f"{seconds:.2f} s, {int(ids.max())} global ids, peak memory +{grown:.2f} GiB, "
              f"time per label x{per_label / first:.2f} of the first size", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048,
                    help="2D mosaic side (pixels; 0: no 2D run)")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--size3d", default="32x192x192", help="ZxYxX (0: no 3D run)")
    ap.add_argument("--block3d", default="32x96x96")
    ap.add_argument("--fast3d", action="store_true",
                    help="assemble the 3D volume in fast mode (stride 2) instead of exact")
    ap.add_argument("--workers", default="2,1")
    ap.add_argument("--merge-labels", default=None,
                    help="only time the merge pass at these label counts, e.g. 1e6,1e7")
    args = ap.parse_args()
    if args.merge_labels:
        return bench_merge([int(float(n)) for n in args.merge_labels.split(",")])
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        _bench(args, Path(tmp))


def _bench(args, tmp: Path) -> None:
    """The 2D and 3D runs, with their inputs and outputs in ``tmp``."""
    import zarr

    from ppp_zoo.data.sample import load_dsb_sample, load_nuclei3d_sample
    from ppp_zoo.evaluate import evaluate_image
    from ppp_zoo.io import open_image_source, write_ome_zarr_image
    from ppp_zoo.runtime import distributed as dist
    from ppp_zoo.runtime.models import resolve_model

    workers = [int(w) for w in args.workers.split(",")]
    times = {}
    if args.size:
        image, _ = load_dsb_sample()
        t = time.perf_counter()
        path2d = write_ome_zarr_image(tmp / "mosaic.ome.zarr",
                                      _mosaic(image, (args.size, args.size)),
                                      chunks=(1024, 1024))
        print(f"2D mosaic {args.size}x{args.size} written as OME-Zarr in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        for n in workers:
            r, wall, memory = _on_cluster(n, lambda client, n=n: dist.segment_distributed(
                path2d, path2d, model=str(resolve_model(None)), block=(args.block, args.block),
                client=client, name=f"w{n}", progress=_progress(f"2D, {n} worker(s)")))
            times[("2d", n)] = wall
            print(f"2D {args.size}x{args.size}, block {args.block}, {n} worker(s): {wall:.1f} s, "
                  f"{args.size ** 2 / 1e6 / wall * 60:.1f} MP/min, {r.n_instances} instances, "
                  f"{memory}, merge {r.timings['merge']:.2f} s", flush=True)
    if args.size3d != "0":
        _, labels3d = load_nuclei3d_sample()
        shape3d = tuple(int(s) for s in args.size3d.split("x"))
        vol = _mosaic(labels3d.astype(np.uint32), shape3d)
        # tiled copies of an instance are separate instances
        zyx = np.indices(shape3d, sparse=True)
        tiles = sum(c // s * 10 ** (2 * (2 - k))
                    for k, (c, s) in enumerate(zip(zyx, labels3d.shape)))
        vol = np.where(vol > 0, vol + tiles * (int(labels3d.max()) + 1), 0).astype(np.uint32)
        n_gt = len(np.unique(vol)) - 1
        path3d = write_ome_zarr_image(tmp / "vol.ome.zarr", vol, "zyx", chunks=(32, 128, 128))
        block3d = tuple(int(s) for s in args.block3d.split("x"))
        mode = "fast" if args.fast3d else "exact"
        for n in workers:
            r, wall, memory = _on_cluster(n, lambda client, n=n: dist.run_blocks(
                open_image_source(path3d), Oracle3D((9, 9, 9), args.fast3d), block=block3d,
                pad=(27, 27, 27), strip=(9, 9, 9), output=path3d, name=f"w{n}", client=client,
                progress=_progress(f"3D, {n} worker(s)")))
            times[("3d", n)] = wall
            out = zarr.open_array(str(path3d / "labels" / f"w{n}" / "0"), mode="r")[...]
            score = evaluate_image(out, vol)
            print(f"3D {args.size3d}, block {args.block3d}, GT patches 9x9x9 ({mode}), "
                  f"{n} worker(s): {wall:.1f} s, {np.prod(shape3d) / 1e6 / wall * 60:.1f} MP/min,"
                  f" {r.n_instances} instances (GT {n_gt}; AP@0.5 {score.ap['0.5']:.3f}, "
                  f"AP@0.9 {score.ap['0.9']:.3f}), {memory}", flush=True)
    for kind in ("2d", "3d"):
        if (kind, 1) in times and (kind, 2) in times:
            print(f"{kind.upper()} 1-worker / 2-worker time: "
                  f"{times[(kind, 1)] / times[(kind, 2)]:.2f}")


def _progress(what: str):
    """Blocks done, on one line of stderr (for long runs)."""
    import sys

    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        print(f"\r  {what}: block {done}/{total}, {time.perf_counter() - t0:.0f} s",
              end="\n" if done == total else "", file=sys.stderr, flush=True)

    return report


if __name__ == "__main__":
    main()

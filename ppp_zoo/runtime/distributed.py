"""Whole slides and volumes: blocks of a large image on dask.distributed, labels in zarr.

The image is cut into blocks by the one block geometry of
:mod:`ppp_zoo.postprocess.blocks` (the same as ``segment`` and
:func:`~ppp_zoo.postprocess.assemble_blockwise` use in one process; the pad adds the
network's halo here). Three passes, each one task per block:

1. **segment** - read the core plus its pad, run the block function (:class:`SegmentBlocks`:
   the :class:`~ppp_zoo.runtime.segment.Segmenter` as for a whole image;
   :class:`AssembleBlocks`: :func:`~ppp_zoo.postprocess.assemble` on raw outputs), and keep
   the instances with a pixel in the core in a temporary array
   (:func:`~ppp_zoo.postprocess.blocks.label_block`).
2. **match** - compare what each block saw in the strips of its neighbours' cores with
   what they wrote there (:func:`~ppp_zoo.postprocess.blocks.match_block`).
3. **relabel** - union-find over all pairs at once
   (:func:`~ppp_zoo.postprocess.blocks.merge_pairs`) gives consecutive global ids ordered
   by block and local id; each block writes its core with them (uint32, uint64 beyond
   2**32 - 1 ids).

The result does not depend on the number of workers (each block's work is the same), and
intensity normalisation uses statistics of the whole image (not of each block). Outputs go
to a temporary folder and are moved into place at the end, so a failed run leaves no label
image behind. Needs the ``[dask]`` extra (dask, distributed, zarr).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SetupError, UserError
from ..io import (
    ImageSource,
    ngff_label_attrs,
    ngff_labels_group_attrs,
    open_image_source,
)
from ..postprocess.blocks import (
    TASK_BLOCK,
    BlockGrid,
    _local,
    block_grid,
    block_luts,
    label_block,
    mask_block,
    match_block,
    match_block_masks,
    merge_pairs,
)

SAMPLE_PIXELS = 1 << 24
"""Normalisation statistics are computed on at most about this many pixels of the image."""
PYRAMID_MIN = 256
"""Label pyramids stop when y and x are at most this size."""

Progress = Callable[[int, int], None] | None


def _import_dask():
    try:
        import dask  # noqa: F401
        import distributed
        import zarr  # noqa: F401
    except ImportError:
        raise SetupError('distributed segmentation needs the [dask] extra: '
                         'pip install "ppp-zoo[dask]"') from None
    return distributed


# --------------------------------------------------------------------------- block functions
_segmenters: dict = {}  # per worker process: the loaded model of the last configuration
_segmenters_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class SegmentBlocks:
    """Block function: :meth:`Segmenter.segment` of a block of the image.

    ``preprocessing`` replaces the package's (statistics fixed for the whole image).
    """

    model: str
    preprocessing: tuple
    engine: str = "onnx"
    device: str = "cpu"
    fast: bool | None = None
    tile: tuple[int, ...] | None = None
    threads: int = 1

    def segmenter(self):
        key = repr(self)
        with _segmenters_lock:  # a worker with several threads loads the model once
            return self._segmenter(key)

    def _segmenter(self, key: str):
        if key not in _segmenters:
            from .engine import create_engine
            from .package import open_package
            from .segment import Segmenter

            package = dataclasses.replace(open_package(self.model),
                                          preprocessing=self.preprocessing)
            _segmenters.clear()
            _segmenters[key] = Segmenter(package, create_engine(package, self.engine,
                                                                self.device, self.threads))
        return _segmenters[key]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The block's labels, or its ``(N, ...)`` masks for an overlapping model."""
        seg = self.segmenter()
        return seg.segment(image, tile=self.tile, fast=self.fast).labels


@dataclasses.dataclass(frozen=True)
class AssembleBlocks:
    """Block function: :func:`~ppp_zoo.postprocess.assemble` of raw outputs.

    With :class:`~ppp_zoo.postprocess.AssemblyParams` the block is ``(numinst (3, ...),
    patches (P, ...))`` stacked on the channel axis; with a model package's
    :class:`~ppp_zoo.postprocess.ModelParams` it is the model's output (numinst and features
    for the current layout), decoded into patches block by block. ``device`` is passed to
    :func:`~ppp_zoo.postprocess.assemble` (where the assembly kernels run)."""

    params: Any
    device: str = "auto"

    def __call__(self, block: np.ndarray) -> np.ndarray:
        from ..postprocess import ModelParams, assemble

        block = np.asarray(block, dtype=np.float32)
        if isinstance(self.params, ModelParams):
            model = self.params
            numinst, values = model.split(block) if model.format >= 2 else \
                (block[:3], block[3:])
            numinst = np.ascontiguousarray(numinst)
            # only the patches this block's assembly reads, compact (CandidatePatches)
            patches = model.patches(numinst, np.ascontiguousarray(values), candidates_only=True)
            return assemble(numinst, patches, model.assembly, device=self.device)
        return assemble(np.ascontiguousarray(block[:3]), np.ascontiguousarray(block[3:]),
                        self.params, device=self.device)


# --------------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True)
class _Job:
    source: Any  # ImageSource, or any object with read(space slices) and space_shape
    block_fn: Callable[[np.ndarray], np.ndarray]
    grid: BlockGrid
    strip: tuple[int, ...]
    scratch: str  # zarr array of local ids
    threads: int | None = None  # numba threads in each task (None: the worker's setting)


def _set_threads(n: int) -> None:
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover - numba is a core dependency
        pass


def _segment_task(job: _Job, index: tuple[int, ...]):
    """Pass 1 for one block: local ids in the core; strips of the neighbours' cores
    (:func:`~ppp_zoo.postprocess.blocks.label_block`)."""
    import zarr

    if job.threads:
        _set_threads(job.threads)
    labels = job.block_fn(job.source.read(job.grid.crop(index)))
    n, core, strips = label_block(labels, job.grid, index, job.strip)
    zarr.open_array(job.scratch, mode="r+")[job.grid.core(index)] = core
    return n, strips


def _match_task(job: _Job, index, n_written: int, strips: dict) -> np.ndarray:
    """Pass 2 for one block: the pairs that are one instance
    (:func:`~ppp_zoo.postprocess.blocks.match_block`)."""
    import zarr

    scratch = zarr.open_array(job.scratch, mode="r")
    return match_block(job.grid, index, n_written, strips, lambda region: scratch[region])


def _relabel_task(job: _Job, index, lut: np.ndarray, target: str, label_index: tuple) -> None:
    """Pass 3 for one block: local ids -> global ids in the output array."""
    import zarr

    core = job.grid.core(index)
    local = np.asarray(zarr.open_array(job.scratch, mode="r")[core])
    out = zarr.open_array(target, mode="r+")
    out[label_index + core] = lut[local]


def _masks_file(job: _Job, index) -> str:
    return os.path.join(job.scratch, f"{job.grid.flat(index)}.npz")


def _read_core_masks(job: _Job, index) -> np.ndarray:
    with np.load(_masks_file(job, index)) as f:
        return np.unpackbits(f["bits"], axis=1, count=int(np.prod(f["shape"][1:]))) \
            .astype(bool).reshape(tuple(f["shape"]))


def _segment_masks_task(job: _Job, index: tuple[int, ...]):
    """Pass 1 for one block of overlapping instances: the masks of the instances it owns,
    cut to its core, saved in the scratch folder (bit-packed); returns their number, the
    strips of the neighbours' cores (:func:`~ppp_zoo.postprocess.blocks.mask_block`) and
    the pairs of them that share a pixel in the core."""
    if job.threads:
        _set_threads(job.threads)
    masks = job.block_fn(job.source.read(job.grid.crop(index)))
    n, cores, strips = mask_block(masks, job.grid, index, job.strip)
    core_shape = tuple(c.stop - c.start for c in job.grid.core(index))
    stack = np.stack(cores) if cores else np.zeros((0,) + core_shape, bool)
    flat = stack.reshape(n, int(np.prod(core_shape)))
    crossed = flat[:, flat.sum(axis=0) >= 2]  # only the pixels in two masks or more
    shared = [(a + 1, b + 1) for a in range(n) for b in range(a + 1, n)
              if np.any(crossed[a] & crossed[b])]
    np.savez(_masks_file(job, index), bits=np.packbits(flat, axis=1),
             shape=np.asarray(stack.shape))
    return n, strips, np.asarray(shared, np.int64).reshape(-1, 2)


def _match_masks_task(job: _Job, index, strips: dict) -> np.ndarray:
    """Pass 2 for one block of overlapping instances
    (:func:`~ppp_zoo.postprocess.blocks.match_block_masks`)."""
    def written(neighbour, region):
        local = _local(region, job.grid.core(neighbour))
        return [m[local] for m in _read_core_masks(job, neighbour)]

    return match_block_masks(job.grid, index, strips, written)


def _write_masks_task(job: _Job, index, lut: np.ndarray, planes: np.ndarray,
                      targets: list, label_index: tuple) -> None:
    """Pass 3 for one block of overlapping instances: each owned instance, with its global
    id, into the label image (plane) its colour says."""
    import zarr

    core = job.grid.core(index)
    shape = tuple(c.stop - c.start for c in core)
    out = [np.zeros(shape, lut.dtype) for _ in targets]
    for k, mask in enumerate(_read_core_masks(job, index), 1):
        out[int(planes[lut[k]])][mask] = lut[k]
    for target, values in zip(targets, out):
        if values.any():
            zarr.open_array(target, mode="r+")[label_index + core] = values


def colour_instances(n: int, shared: np.ndarray) -> np.ndarray:
    """Plane of each instance ``1..n`` (index 0 unused): the first plane that holds none of
    the instances with a smaller id that it shares a pixel with (``shared``: pairs of ids),
    as :func:`ppp_zoo.napari.layers.label_planes` packs a mask stack.

    >>> colour_instances(3, np.array([[1, 2], [2, 3]])).tolist()
    [0, 0, 1, 0]
    """
    neighbours: list[list[int]] = [[] for _ in range(n + 1)]
    for a, b in np.asarray(shared, np.int64).reshape(-1, 2):
        if a != b:
            neighbours[max(a, b)].append(int(min(a, b)))
    planes = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        taken = {int(planes[j]) for j in neighbours[i]}
        planes[i] = next(k for k in range(len(taken) + 1) if k not in taken)
    return planes


def plane_names(name: str, n_planes: int) -> list[str]:
    """Label image names of the planes of overlapping instances: ``name`` for the first,
    ``name_2``, ``name_3``, ... for the others.

    >>> plane_names("worms", 3)
    ['worms', 'worms_2', 'worms_3']
    """
    return [name] + [f"{name}_{k}" for k in range(2, n_planes + 1)]


def run_mask_blocks(source, block_fn, *, block: Sequence[int], pad: Sequence[int],
                    strip: Sequence[int], output: str | os.PathLike, name: str = "instances",
                    workers: int | None = None, scheduler: str | None = None, client=None,
                    progress: Progress = None, retries: int = 2, threads: int | None = None,
                    pyramid: bool = True) -> DistributedResult:
    """:func:`run_blocks` for overlapping instances: ``block_fn`` returns ``(N, *block)``
    masks. The instances are stored as the fewest label images in which no two of them
    share a pixel (:func:`colour_instances`; each instance whole in one of them):
    OME-Zarr label images ``labels/<name>``, ``labels/<name>_2``, ... (see
    :func:`plane_names`) in ``output`` (a ``.zarr`` store); every id appears in one plane
    only. ``DistributedResult.planes`` names those label images."""
    _import_dask()
    output = Path(output)
    if output.suffix.lower() != ".zarr" or not name:
        raise UserError(f"{output}: overlapping instances are written as OME-Zarr label "
                        "images: give a .zarr output")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in source.space_shape)
    grid = BlockGrid(shape, tuple(block), tuple(pad))
    plans: list[_OutputPlan] = []
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.blocks-", dir=_scratch_parent(output)))
    cluster = None
    try:
        cluster = _Cluster(workers, scheduler, client)
        job = _Job(source, block_fn, grid, tuple(strip), str(scratch),
                   threads or cluster.threads)
        c = cluster.client
        indices = grid.indices()
        job_f, first, counts, ids, t = _segment_and_merge(
            c, job, indices, _segment_masks_task, _match_masks_task, lambda r: r[1:2],
            progress, retries, timings)
        n_total = int(ids.max(initial=0))
        dtype = np.dtype(np.uint32 if n_total < 2**32 else np.uint64)
        luts = block_luts(counts, ids, dtype)
        shared = np.concatenate([lut[pair] for lut, (_, _, pair) in zip(luts, first)]
                                or [np.zeros((0, 2), np.int64)])
        del first
        planes = colour_instances(n_total, shared)
        n_planes = int(planes.max(initial=0)) + 1
        timings["merge"] = time.perf_counter() - t
        t = time.perf_counter()
        targets, label_index = [], ()
        for plane_name in plane_names(name, n_planes):
            plans.append(_OutputPlan.create(source, output, plane_name))
            target, label_index = plans[-1].create_level0(shape, grid.block, dtype)
            targets.append(target)
        _run(c, _write_masks_task, [(job_f, i, lut, planes, targets, label_index)
                                    for i, lut in zip(indices, luts)],
             None, "writing labels", retries)
        if pyramid:
            for plan in plans:
                plan.write_pyramid(c)
        timings["write"] = time.perf_counter() - t
        for plan in plans:
            plan.finish()
    except BaseException:
        for plan in plans:
            plan.abandon()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if cluster is not None:
            cluster.close()
    timings["total"] = time.perf_counter() - t0
    return DistributedResult(str(output), n_total, shape, tuple(block), len(indices),
                             str(dtype), cluster.workers, timings,
                             planes=tuple(plane_names(name, n_planes)))


def _segment_and_merge(c, job: _Job, indices: list, segment_task, match_task, match_args,
                       progress: Progress, retries: int, timings: dict):
    """Passes 1 and 2 and the merge, for labels and masks alike: ``segment_task`` on every
    block, ``match_task(job, index, *match_args(its result))`` on every block, then the
    union-find. Returns the scattered job, the first pass's results, the instances per
    block, the global ids and when the merge phase began (``timings["blocks"]`` is set)."""
    [job_f] = c.scatter([job], broadcast=True)
    t = time.perf_counter()
    first = _run(c, segment_task, [(job_f, i) for i in indices], progress,
                 "segmenting a block", retries)
    timings["blocks"] = time.perf_counter() - t
    t = time.perf_counter()
    counts = np.array([r[0] for r in first], np.int64)
    pairs = _run(c, match_task, [(job_f, i, *match_args(r)) for i, r in zip(indices, first)],
                 None, "matching block faces", retries)
    return job_f, first, counts, merge_pairs(counts, np.concatenate(pairs)), t


def _scratch_parent(output: Path) -> Path:
    parent = output if output.exists() else output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{output}: cannot write there ({err.strerror or err})") from None
    return parent


# --------------------------------------------------------------------------- driver
@dataclasses.dataclass(frozen=True)
class DistributedResult:
    """What :func:`segment_distributed` / :func:`assemble_distributed` wrote."""

    output: str
    n_instances: int
    shape: tuple[int, ...]
    block: tuple[int, ...]
    n_blocks: int
    dtype: str
    workers: int
    timings: dict
    planes: tuple[str, ...] = ()
    """Overlapping instances: the names of the label images that hold them."""

    def summary(self) -> dict:
        out = {"output": self.output, "n_instances": self.n_instances,
               "shape": list(self.shape), "block": list(self.block),
               "n_blocks": self.n_blocks, "dtype": self.dtype, "workers": self.workers,
               "timings": {k: round(v, 3) for k, v in self.timings.items()}}
        if self.planes:
            out["planes"] = list(self.planes)
        return out


class _Cluster:
    """A client on a given scheduler, or on a LocalCluster of ``workers`` processes."""

    def __init__(self, workers: int | None, scheduler: str | None, client=None):
        distributed = _import_dask()
        self._own = []
        if client is not None:
            self.client = client
        elif scheduler:
            self.client = distributed.Client(scheduler)
            self._own.append(self.client)
        else:
            n = workers or max(1, min(os.cpu_count() or 1, 4))
            threads = max(1, (os.cpu_count() or 1) // n)
            env = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": str(threads)}
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                env=env, silence_logs=40)
            self.client = distributed.Client(cluster)
            self._own += [self.client, cluster]
        info = self.client.scheduler_info()["workers"]
        self.workers = max(1, len(info))
        # numba threads per task on a cluster of our own; a user's workers keep theirs
        self.threads = max(1, (os.cpu_count() or 1) // self.workers) if not scheduler \
            and client is None else None

    def close(self) -> None:
        for obj in self._own:
            obj.close()


def _run(client, fn, args_per_block: list, progress: Progress, what: str, retries: int):
    import distributed

    futures = [client.submit(fn, *args, retries=retries, pure=False) for args in args_per_block]
    done = 0
    for _ in distributed.as_completed(futures):
        done += 1
        if progress is not None:
            progress(done, len(futures))
    try:
        return client.gather(futures)
    except Exception as err:  # the block's own exception, re-raised as it is
        if hasattr(err, "add_note"):
            err.add_note(f"(in the dask step: {what})")
        raise


def _validate_block(block: Sequence[int] | None, ndim: int, halo: Sequence[int]) -> tuple:
    if block is None:
        block = TASK_BLOCK[ndim]
    block = tuple(int(b) for b in block)
    if len(block) != ndim:
        raise UserError(f"block {'x'.join(map(str, block))} must have {ndim} entries for "
                         f"a {ndim}D image")
    small = [i for i, (b, h) in enumerate(zip(block, halo)) if b < 2 * h or b < 1]
    if small:
        raise UserError(f"block {'x'.join(map(str, block))} is smaller than twice the "
                         f"halo {'x'.join(map(str, halo))}: use at least "
                         f"{'x'.join(str(max(2 * h, 1)) for h in halo)}")
    return block


def _fixed_preprocessing(source, ops: Sequence[dict], space_axes: Sequence[str]) -> tuple:
    """The package's preprocessing with per-sample statistics computed once on the whole
    image (a strided sample of at most :data:`SAMPLE_PIXELS` pixels) and fixed, so every
    block is normalised alike."""
    fixed = []
    stride = None
    sample = None
    for op in ops:
        kw = dict(op.get("kwargs") or {})
        if op["id"] not in ("scale_range", "zero_mean_unit_variance"):
            fixed.append(op)
            continue
        if sample is None:
            n = math.prod(source.space_shape)
            step = max(1, math.ceil((n / SAMPLE_PIXELS) ** (1 / len(source.space_shape))))
            stride = tuple(slice(None, None, step) for _ in source.space_shape)
            sample = _read_strided(source, stride).astype(np.float64)
            if sample.ndim == len(source.space_shape):
                sample = sample[None]
        per_channel = "channel" not in [str(a) for a in (kw.get("axes") or ["channel"])]
        data = sample.reshape(len(sample), -1) if per_channel else sample.reshape(1, -1)
        if op["id"] == "scale_range":
            q = np.array([float(kw.get("min_percentile", 0.0)),
                          float(kw.get("max_percentile", 100.0))]) / 100.0
            lo, hi = np.quantile(data, q, axis=1, method="linear")
            gain = 1.0 / (hi - lo + float(kw.get("eps", 1e-6)))
            offset = -lo * gain
        else:
            mean, std = data.mean(axis=1), data.std(axis=1)
            gain = 1.0 / (std + float(kw.get("eps", 1e-6)))
            offset = -mean * gain
        if per_channel and len(gain) > 1:
            fixed.append({"id": "scale_linear", "kwargs": {
                "gain": gain.tolist(), "offset": offset.tolist(), "axis": "channel"}})
        else:
            fixed.append({"id": "scale_linear", "kwargs": {"gain": float(gain[0]),
                                                           "offset": float(offset[0])}})
    return tuple(fixed)


def _read_strided(source, stride: tuple[slice, ...]) -> np.ndarray:
    full = tuple(slice(0, s) for s in source.space_shape)
    if all(s.step == 1 for s in stride):
        return source.read(full)
    # read along the first axis in slabs so the driver never holds the whole image
    first = stride[0].step
    slabs = []
    block = max(first, 256 // first * first)
    for z in range(0, source.space_shape[0], block):
        part = source.read((slice(z, min(z + block, source.space_shape[0])),) + full[1:])
        slabs.append(part[(Ellipsis,) + stride])
    return np.concatenate(slabs, axis=-len(stride))


def run_blocks(source, block_fn, *, block: Sequence[int], pad: Sequence[int],
               strip: Sequence[int], output: str | os.PathLike, name: str = "labels",
               workers: int | None = None, scheduler: str | None = None, client=None,
               progress: Progress = None, retries: int = 2, threads: int | None = None,
               pyramid: bool = True) -> DistributedResult:
    """Label ``source`` block by block with ``block_fn`` on dask.distributed.

    Parameters
    ----------
    source : ImageSource or object with ``read(space slices)``, ``space_shape``
        The input; ``read`` returns ``([C,] [Z,] Y, X)`` blocks.
    block_fn : callable
        A block (as ``read`` gives it) -> labels of the block's space shape. Must pickle.
    block, pad, strip : sequence of int
        Core size, pixels read around it (network halo + assembly context + strip), and
        the overlap compared with each neighbour (at most ``pad`` minus the context).
    output : path
        ``*.zarr``: an OME-Zarr label image ``labels/<name>`` (inside the input when
        ``output`` is the input's own store); ``*.tif``/``*.tiff``: a TIFF;
        ``*.zarr`` with ``name=""``: a plain zarr array.
    workers, scheduler, client
        A LocalCluster of ``workers`` processes (default), the scheduler at ``scheduler``,
        or an existing ``distributed.Client``.
    progress : callable, optional
        Called with (blocks done, blocks total) in each pass.
    retries : int
        Times dask retries a failed block task.

    Returns
    -------
    DistributedResult
    """
    _import_dask()
    import zarr

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    shape = tuple(int(s) for s in source.space_shape)
    grid = BlockGrid(shape, tuple(block), tuple(pad))
    plan = _OutputPlan.create(source, Path(output), name)
    cluster = None
    try:
        cluster = _Cluster(workers, scheduler, client)
        nthreads = threads or cluster.threads
        scratch = str(plan.tmp / "_blocks")
        zarr.create_array(scratch, shape=shape, chunks=grid.block, dtype=np.uint32,
                          zarr_format=2, fill_value=0)
        job = _Job(source, block_fn, grid, tuple(strip), scratch, nthreads)
        c = cluster.client
        indices = grid.indices()
        job_f, first, counts, ids, t = _segment_and_merge(
            c, job, indices, _segment_task, _match_task, lambda r: r, progress, retries,
            timings)
        del first
        n_total = int(ids.max(initial=0))
        dtype = np.dtype(np.uint32 if n_total < 2**32 else np.uint64)
        timings["merge"] = time.perf_counter() - t
        t = time.perf_counter()
        target, label_index = plan.create_level0(shape, grid.block, dtype)
        luts = block_luts(counts, ids, dtype)
        _run(c, _relabel_task, [(job_f, i, lut, target, label_index)
                                for i, lut in zip(indices, luts)],
             None, "writing labels", retries)
        shutil.rmtree(scratch, ignore_errors=True)
        if pyramid:
            plan.write_pyramid(c)
        timings["write"] = time.perf_counter() - t
        plan.finish()
    except BaseException:
        plan.abandon()
        raise
    finally:
        if cluster is not None:
            cluster.close()
    timings["total"] = time.perf_counter() - t0
    return DistributedResult(str(output), n_total, shape, tuple(block), len(indices),
                             str(dtype), cluster.workers, timings)


# --------------------------------------------------------------------------- output
@dataclasses.dataclass
class _OutputPlan:
    """Where the labels go, written under ``tmp`` and moved into place by :meth:`finish`."""

    target: Path  # final folder (label group, zarr array) or TIFF file
    tmp: Path
    kind: str  # "ome-zarr", "zarr", "tiff"
    axes: str
    scale: tuple[float, ...]
    units: tuple[str, ...]
    zarr_format: int
    name: str
    labels_group: Path | None = None
    levels: int = 1
    source_image: str | None = None

    @classmethod
    def create(cls, source, output: Path, name: str) -> _OutputPlan:
        space = getattr(source, "space_axes", "zyx"[3 - len(source.space_shape):])
        axes = getattr(source, "axes", space)
        scale = getattr(source, "scale", (1.0,) * len(axes))
        units = getattr(source, "units", ("",) * len(axes))
        fmt = getattr(source, "zarr_format", 0) or 2
        suffix = output.suffix.lower()
        inside = getattr(source, "kind", "") == "ome-zarr" and output.exists() and \
            output.resolve() == Path(source.path).resolve()
        if suffix in (".tif", ".tiff"):
            kind, target, axes = "tiff", output, space
        elif suffix == ".zarr" and name:
            kind = "ome-zarr"
            if not inside:
                fmt = 2
            target = output / "labels" / name
        elif suffix == ".zarr":
            kind, target, axes = "zarr", output, space
        else:
            raise UserError(f"{output}: write labels to a .zarr store or a .tif file")
        if kind != "ome-zarr" or "c" not in axes and "t" not in axes:
            keep = [i for i, a in enumerate(axes) if a in space] if kind != "ome-zarr" \
                else list(range(len(axes)))
            scale = tuple(scale[i] for i in keep) if len(scale) == len(axes) else scale
            units = tuple(units[i] for i in keep) if len(units) == len(axes) else units
            axes = "".join(axes[i] for i in keep)
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
        except OSError as err:
            raise UserError(f"{output}: cannot write there ({err.strerror or err})") from None
        plan = cls(target, tmp, kind, axes, tuple(scale), tuple(units), fmt, name)
        if kind == "ome-zarr":
            plan.labels_group = output / "labels"
            plan.source_image = "../../" if inside else None
        return plan

    def _array_path(self) -> Path:
        return self.tmp / "0" if self.kind == "ome-zarr" else self.tmp / "labels"

    def create_level0(self, shape, block, dtype) -> tuple[str, tuple]:
        import zarr

        full = tuple(1 if a in "tc" else s for a, s in
                     zip(self.axes, _expand(self.axes, shape)))
        chunks = tuple(1 if a in "tc" else b for a, b in
                       zip(self.axes, _expand(self.axes, block)))
        path = self._array_path()
        zarr.create_array(str(path), shape=full, chunks=chunks, dtype=dtype, fill_value=0,
                          zarr_format=self.zarr_format,
                          **({"dimension_names": list(self.axes)}
                             if self.zarr_format == 3 else {}))
        return str(path), tuple(0 for a in self.axes if a in "tc")

    def write_pyramid(self, client) -> None:
        if self.kind != "ome-zarr":
            return
        import dask.array as da
        import zarr

        level = 0
        while True:
            prev = zarr.open_array(str(self.tmp / str(level)), mode="r")
            yx = [i for i, a in enumerate(self.axes) if a in "yx"]
            if max(prev.shape[i] for i in yx) <= PYRAMID_MIN:
                break
            arr = da.from_zarr(prev)
            down = arr[tuple(slice(None, None, 2) if i in yx else slice(None)
                             for i in range(arr.ndim))]
            chunks = prev.chunks
            down = down.rechunk(chunks)
            level += 1
            out = zarr.create_array(str(self.tmp / str(level)), shape=down.shape,
                                    chunks=chunks, dtype=prev.dtype, fill_value=0,
                                    zarr_format=self.zarr_format)
            client.compute(da.store(down, out, lock=False, compute=False)).result()
        self.levels = level + 1

    def finish(self) -> None:
        import zarr

        if self.kind == "tiff":
            from ..io import atomic_path

            labels = zarr.open_array(str(self._array_path()), mode="r")[...]
            import tifffile

            with atomic_path(self.target) as tmp_file:
                tifffile.imwrite(tmp_file, labels, compression="zlib",
                                 photometric="minisblack", bigtiff=labels.nbytes > 2**31)
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.kind == "zarr":
            _replace_dir(self.tmp / "labels", self.target)
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        scales = [tuple(s * (2.0 ** k if a in "yx" else 1.0) for s, a in zip(self.scale, self.axes))
                  for k in range(self.levels)]
        group = zarr.open_group(str(self.tmp), mode="a", zarr_format=self.zarr_format)
        group.attrs.update(ngff_label_attrs(self.name, self.axes, scales, self.units,
                                            self.zarr_format, self.source_image))
        _replace_dir(self.tmp, self.target)
        root = self.labels_group.parent
        if not any((root / n).exists() for n in (".zgroup", "zarr.json")):
            zarr.open_group(str(root), mode="a", zarr_format=self.zarr_format)
        labels = zarr.open_group(str(self.labels_group), mode="a",
                                 zarr_format=self.zarr_format)
        names = list(_ngff_names(labels.attrs.asdict()))
        if self.name not in names:
            names.append(self.name)
        labels.attrs.update(ngff_labels_group_attrs(names, self.zarr_format))

    def abandon(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _ngff_names(attrs: dict) -> list[str]:
    return list(attrs.get("ome", attrs).get("labels", []))


def _expand(axes: str, space: Sequence[int]) -> list[int]:
    it = iter(space)
    return [1 if a in "tc" else next(it) for a in axes]


def _replace_dir(new: Path, target: Path) -> None:
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- entry points
def segment_distributed(source: str | os.PathLike | ImageSource, output: str | os.PathLike, *,
                        model: str | os.PathLike, level: int = 0,
                        block: Sequence[int] | None = None, name: str = "nuclei",
                        engine: str = "onnx", device: str = "cpu", fast: bool | None = None,
                        tile: Sequence[int] | None = None, workers: int | None = None,
                        scheduler: str | None = None, client=None, progress: Progress = None,
                        retries: int = 2) -> DistributedResult:
    """Segment a large image with a model package, block by block on dask.distributed.

    Parameters
    ----------
    source : path or ImageSource
        OME-Zarr image (``level`` picks the resolution), zarr array, TIFF or ``.npy``.
    output : path
        ``*.zarr``: OME-Zarr label image ``labels/<name>`` with a pyramid (inside the
        input when ``output`` is the input); ``*.tif``: a TIFF.
    model : path
        Model package (.zip or folder).
    block : sequence of int, optional
        Core size per space axis (default 1024x1024, 64x256x256 in 3D); at least twice
        the network's halo.
    workers, scheduler, client
        A LocalCluster of ``workers`` processes, a running scheduler, or a Client.

    Returns
    -------
    DistributedResult
    """
    _import_dask()
    from .package import open_package
    from .preprocess import validate_preprocessing

    src = source if isinstance(source, ImageSource) else open_image_source(source, level)
    package = open_package(model)
    validate_preprocessing(package.preprocessing)
    if len(src.space_shape) != package.ndim:
        raise UserError(f"{src.path}: {len(src.space_shape)} space axes "
                         f"({src.space_axes.upper()}), the model is {package.ndim}D")
    if src.channels != package.n_channels:
        raise UserError(f"{src.path}: {src.channels} channels, the model takes "
                         f"{package.n_channels}")
    overlapping = package.assembly_params().overlapping
    if overlapping and Path(output).suffix.lower() != ".zarr":  # before any cluster starts
        raise UserError(f"{output}: the model assembles overlapping instances, written block "
                        "by block as OME-Zarr label images: give a .zarr output")
    halo = tuple(int(h) for h in package.halo)
    block = _validate_block(block, package.ndim, halo)
    # crops start on the model's step grid (and on even pixels for the fast mode's
    # stride-2 voting), as the whole image does: blocks and pads are multiples of it
    align = [math.lcm(int(s), 2) for s in package.step]
    grid, strip = block_grid(src.space_shape, package.model_params.assembly.patchshape, block,
                             halo=halo, align=align)
    block, pad = grid.block, grid.pad
    fn = SegmentBlocks(str(model), _fixed_preprocessing(src, package.preprocessing,
                                                        package.space_axes),
                       engine, device, fast, tuple(tile) if tile else None)
    run = run_mask_blocks if overlapping else run_blocks
    return run(src, fn, block=block, pad=pad, strip=strip, output=output, name=name,
               workers=workers, scheduler=scheduler, client=client, progress=progress,
               retries=retries)


def assemble_distributed(source, output: str | os.PathLike, params, *,
                         block: Sequence[int] | None = None, name: str = "instances",
                         device: str = "auto", **kwargs) -> DistributedResult:
    """Assemble raw outputs block by block: ``(numinst (3), patches (P))`` stacked on the
    channel axis of ``source`` with :class:`~ppp_zoo.postprocess.AssemblyParams`, or a model
    package's output (e.g. ``(3 + F, ...)``: numinst and features) with its
    :class:`~ppp_zoo.postprocess.ModelParams`. ``source`` is a zarr array opened with
    :func:`~ppp_zoo.io.open_image_source`, or any object with ``read``/``space_shape``; see
    :func:`run_blocks` for ``output`` and ``kwargs``; ``device`` is where each block's
    assembly kernels run (``"auto"``, ``"cpu"`` or ``"cuda"``, on the worker)."""
    assembly = getattr(params, "assembly", params)
    if assembly.overlapping and Path(output).suffix.lower() != ".zarr":
        raise UserError(f"{output}: overlapping instances are written block by block as "
                        "OME-Zarr label images: give a .zarr output")
    block = _validate_block(block, assembly.ndim, tuple(0 for _ in assembly.patchshape))
    # blocks start on the fast mode's voting grid, so that every block votes with the
    # centres the whole image would
    stride = assembly.grid
    if any(b % stride for b in block):
        raise UserError(f"block {'x'.join(map(str, block))} must be a multiple of the fast "
                         f"mode's stride {stride}")
    grid, strip = block_grid(source.space_shape, assembly.patchshape, block, align=stride)
    pad = grid.pad
    run = run_mask_blocks if assembly.overlapping else run_blocks
    return run(source, AssembleBlocks(params, device), block=block, pad=pad, strip=strip,
               output=output, name=name, **kwargs)

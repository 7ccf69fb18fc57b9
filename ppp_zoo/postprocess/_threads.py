"""One parallel numba region at a time where numba's threading layer needs it.

numba's ``workqueue`` threading layer (what numba uses when neither TBB nor OpenMP is
installed) is not thread-safe: two threads of one process that launch parallel kernels at
the same time make numba abort the process. That happens as soon as two callers assemble
concurrently: the napari plugin's Segment and Train workers, or several threads of one
dask worker. :func:`parallel_section` serialises the parallel kernels of the
postprocessing across threads under ``workqueue`` (and while numba has not chosen its
layer yet), and costs nothing under ``tbb`` or ``omp``, which run them side by side.
"""

from __future__ import annotations

import contextlib
import threading

_LOCK = threading.RLock()  # re-entrant: assemble calls the decoder's kernels too
_CONCURRENT_LAYERS = ("tbb", "omp")


def blocks_side_by_side() -> bool:
    """Whether several threads may run parallel kernels at once (``omp`` or ``tbb``)."""
    import numba

    try:
        return numba.threading_layer() in _CONCURRENT_LAYERS
    except ValueError:  # no parallel kernel has run yet: the layer is not chosen
        return False


def parallel_section():
    """A context in which this thread may launch numba parallel kernels."""
    return contextlib.nullcontext() if blocks_side_by_side() else _LOCK


__all__ = ["blocks_side_by_side", "parallel_section"]

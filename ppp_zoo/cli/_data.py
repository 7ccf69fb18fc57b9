"""The ``data`` commands: the real DSB 2018 sample and the synthetic worm and nuclei data
sets, written as image and mask folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import _status, reports_errors


@reports_errors
def data_sample(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write into.")],
):
    """Write the real DSB 2018 sample (image, labels, and its left/right halves)."""
    from ..data.sample import write_sample

    paths = write_sample(output)
    _status(f"wrote {len(paths)} files to {output}")


@reports_errors
def data_synth_worms(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write into.")],
    n_images: Annotated[int, typer.Option(min=1, help="Number of images.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
):
    """Write synthetic overlapping worms: images/ and masks/ (one mask per worm)."""
    from ..data.synth import write_synth_worms

    write_synth_worms(output, n_images=n_images, seed=seed)
    _status(f"wrote {n_images} worm images to {output}")


@reports_errors
def data_synth_nuclei(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write into.")],
    n_images: Annotated[int, typer.Option(min=1, help="Number of images.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    size: Annotated[str, typer.Option(help="Image size, e.g. 256x256 or 32x128x128.")] = "256x256",
):
    """Write synthetic touching nuclei: images/ and masks/ (label images)."""
    from ..data.synth import write_synth_nuclei
    from ..postprocess.params import parse_shape

    write_synth_nuclei(output, n_images=n_images, seed=seed, shape=parse_shape(size))
    _status(f"wrote {n_images} nuclei images to {output}")

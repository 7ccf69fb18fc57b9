"""Data for ppp-zoo: real samples, synthetic generators and folder data sets."""

from .folder import FolderDataset, load_bbbc010
from .sample import dsb_split, load_dsb_sample, load_nuclei3d_sample, write_sample
from .synth import (
    NucleiInfo,
    posture_source,
    synth_fluorescence_nuclei,
    synth_fluorescence_nuclei_dataset,
    synth_nuclei,
    synth_nuclei_dataset,
    synth_worms,
    synth_worms_dataset,
    write_synth_nuclei,
    write_synth_worms,
)
from .targets import instance_targets

__all__ = [
    "FolderDataset",
    "instance_targets",
    "dsb_split",
    "load_bbbc010",
    "load_dsb_sample",
    "load_nuclei3d_sample",
    "NucleiInfo",
    "posture_source",
    "synth_fluorescence_nuclei",
    "synth_fluorescence_nuclei_dataset",
    "synth_nuclei",
    "synth_nuclei_dataset",
    "synth_worms",
    "synth_worms_dataset",
    "write_sample",
    "write_synth_nuclei",
    "write_synth_worms",
]

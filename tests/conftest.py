"""Shared fixtures: the real DSB 2018 sample and the 3D nuclei sample (shipped by stardist)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def dsb_sample():
    from ppp_zoo.data.sample import load_dsb_sample

    return load_dsb_sample()


@pytest.fixture(scope="session")
def nuclei3d_sample():
    from ppp_zoo.data.sample import load_nuclei3d_sample

    return load_nuclei3d_sample()


@pytest.fixture(scope="session")
def dsb_targets(dsb_sample):
    """GT numinst and 25x25 patches of the whole 512x512 DSB sample."""
    from ppp_zoo.data.targets import instance_targets

    _, labels = dsb_sample
    return instance_targets(labels, (25, 25))


@pytest.fixture
def one_torch_thread():
    """Run a test with one PyTorch thread (small nets are slower with more), then restore."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

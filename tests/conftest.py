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


@pytest.fixture(scope="session")
def tiny_checkpoint_2d(tmp_path_factory):
    """The checkpoint of a tiny 2D ``ppp`` net (7x7 patches, depth-2 U-Net) trained for 400
    steps on synthetic nuclei with one PyTorch thread: trained once per test run and shared
    by the runtime and command-line tests."""
    torch = pytest.importorskip("torch")
    from runtime_packages import trained_net

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, ckpt = trained_net(tmp_path_factory.mktemp("tiny2d_net") / "run", ndim=2,
                              iterations=400)
    finally:
        torch.set_num_threads(threads)
    return ckpt


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

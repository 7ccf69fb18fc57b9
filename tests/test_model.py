"""The torch PatchPerPix network: shapes, losses, a few training steps, tracing."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ppp_zoo.data.targets import instance_targets
from ppp_zoo.model import (
    PatchDecoder,
    PatchPerPixNet,
    UNet,
    numinst_loss,
    ppp_dec_loss,
    ppp_loss,
    ppp_sampled_loss,
    probabilities,
    total_loss,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one thread is fastest and robust to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("variant", ["ppp", "ppp+dec"])
@pytest.mark.parametrize("ndim, shape, patchshape, depth", [
    (2, (32, 32), (25, 25), 3),
    (3, (16, 32, 32), (9, 9, 9), 2),
])
def test_forward_shapes_and_probabilities(ndim, shape, patchshape, depth, variant):
    torch.manual_seed(0)
    net = PatchPerPixNet(ndim, 1, patchshape, variant, base_features=4, depth=depth)
    with torch.no_grad():
        outputs = net(torch.randn((1, 1) + shape))
    n_second = math.prod(patchshape) if variant == "ppp" else net.decoder.code_channels
    assert outputs[0].shape == (1, 3) + shape
    assert outputs[1].shape == (1, n_second) + shape
    numinst, second = probabilities(outputs)
    assert torch.allclose(numinst.sum(dim=1), torch.ones((1,) + shape), atol=1e-5)
    for p in (numinst, second):
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


def test_unet_size_divisor_and_upsample_mode():
    net = UNet(2, 2, base_features=4, depth=3, up_mode="upsample")
    assert net.size_divisor == 4
    assert net(torch.zeros(2, 2, 12, 20)).shape == (2, 4, 12, 20)
    with pytest.raises(ValueError, match="padding"):
        UNet(2, 1, padding="valid")


@pytest.mark.parametrize("ndim, code_shape, patchshape", [
    (2, None, (25, 25)),
    (2, (4, 2, 2), (41, 41)),
    (3, None, (9, 9, 9)),
    (3, (4, 2, 2, 2), (7, 7, 7)),
])
def test_decoder_output_shape(ndim, code_shape, patchshape):
    dec = PatchDecoder(ndim, code_shape, patchshape)
    out = dec(torch.rand(3, dec.code_channels))
    assert out.shape == (3, math.prod(patchshape))
    assert set(dec.to_arrays()) == set(dec.state_dict())


def test_decode_dense_matches_per_pixel_decoder():
    torch.manual_seed(0)
    net = PatchPerPixNet(2, 1, (5, 5), "ppp+dec", base_features=4, depth=2)
    codes = torch.rand(2, net.decoder.code_channels, 3, 4)
    with torch.no_grad():
        dense = net.decode(codes)
        single = net.decoder(codes[1, :, 2, 3][None])
    assert dense.shape == (2, 25, 3, 4)
    assert torch.allclose(dense[1, :, 2, 3], single[0], atol=1e-6)


def _by_hand_masking_case():
    # one image, 2 patch channels, 3 pixels of class 0, 1 and 2+
    numinst = torch.tensor([[[[1.0, 0, 0]], [[0, 1, 0]], [[0, 0, 1]]]])  # (1, 3, 1, 3)
    target = torch.tensor([[[[0.0, 1, 1]], [[0, 1, 0]]]])  # (1, 2, 1, 3)
    return numinst, target


def test_ppp_loss_ignores_overlap_pixels():
    numinst, target = _by_hand_masking_case()
    logits = torch.zeros(1, 2, 1, 3)
    assert float(ppp_loss(logits, target, numinst)) == pytest.approx(math.log(2))
    wrong_at_overlap = logits.clone()
    wrong_at_overlap[0, :, 0, 2] = -20.0
    assert float(ppp_loss(wrong_at_overlap, target, numinst)) == pytest.approx(math.log(2))
    # one logit changed at a valid pixel: 4 valid entries, 3 at log 2, one at softplus(-x)
    x = 3.0
    changed = logits.clone()
    changed[0, 0, 0, 1] = x
    expected = (3 * math.log(2) + math.log1p(math.exp(-x))) / 4
    assert float(ppp_loss(changed, target, numinst)) == pytest.approx(expected, rel=1e-6)


def test_ppp_loss_weights_the_pixels_of_one_instance():
    """patch_fg_weight w: the entries of numinst == 1 pixels count w times those of
    background pixels in the mean (overlap pixels still count 0)."""
    numinst, target = _by_hand_masking_case()
    changed = torch.zeros(1, 2, 1, 3)
    changed[0, 0, 0, 1] = 3.0  # at the one-instance pixel; pixel 0 is background
    w = 5.0
    at_fg = math.log1p(math.exp(-3.0)) + math.log(2)  # its two channels
    expected = (2 * math.log(2) + w * at_fg) / (2 + 2 * w)
    assert float(ppp_loss(changed, target, numinst, w)) == pytest.approx(expected, rel=1e-6)


def test_numinst_loss_by_hand():
    numinst, _ = _by_hand_masking_case()
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, 1, 0, 1] = 2.0
    per_pixel = [math.log(3), -math.log(math.exp(2) / (math.exp(2) + 2)), math.log(3)]
    assert float(numinst_loss(logits, numinst)) == pytest.approx(np.mean(per_pixel), rel=1e-6)


class _RecordingDecoder(torch.nn.Module):
    def __init__(self, n_patch):
        super().__init__()
        self.n_patch = n_patch
        self.seen = None

    def forward(self, codes):
        self.seen = codes.detach().clone()
        return torch.zeros(codes.shape[0], self.n_patch)


@pytest.mark.parametrize("n_single, max_samples, expected", [(2048, 100, 100), (5, 100, 5),
                                                             (0, 100, None)])
def test_ppp_dec_loss_samples_single_instance_pixels(n_single, max_samples, expected):
    b, h, w, c, p = 2, 32, 64, 6, 9
    classes = torch.zeros(b * h * w, dtype=torch.long)
    perm = torch.randperm(b * h * w, generator=torch.Generator().manual_seed(1))
    classes[perm[:n_single]] = 1
    classes[perm[n_single:n_single + 300]] = 2
    classes = classes.reshape(b, h, w)
    numinst = torch.nn.functional.one_hot(classes, 3).movedim(-1, 1).float()
    # code channel 0 tells the pixel's class: high at numinst == 1, low elsewhere
    code_logits = torch.full((b, c, h, w), -10.0)
    code_logits[:, 0][classes == 1] = 10.0
    code_logits.requires_grad_(True)
    dec = _RecordingDecoder(p)
    loss = ppp_dec_loss(code_logits, dec, torch.zeros(b, p, h, w), numinst,
                        max_samples=max_samples, generator=torch.Generator().manual_seed(0))
    if expected is None:
        assert dec.seen is None and loss.item() == 0.0
        return
    assert dec.seen.shape == (expected, c)
    assert bool((dec.seen[:, 0] > 0.99).all())
    assert loss.item() == pytest.approx(math.log(2))


def test_ppp_sampled_loss_is_the_dense_loss_at_the_one_instance_pixels():
    """With room for every numinst == 1 pixel, the sampled loss (head at those pixels
    alone) equals the dense patch loss with the background and overlap pixels weighed 0;
    fewer samples take exactly that many of them."""
    torch.manual_seed(0)
    x, (numinst, patches) = _synthetic_batch((7, 7))
    net = PatchPerPixNet(2, 1, (7, 7), base_features=4, depth=2)
    _, feats = net.features(x)
    logits = net.patch_head(feats)
    one = numinst[:, 1:2] > 0.5
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, patches, reduction="none")
    want = (bce * one).sum() / (one.sum() * logits.shape[1])
    n_one = int(one.sum())
    got = ppp_sampled_loss(feats, net.patch_head, patches, numinst, max_samples=10 ** 6)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # total_loss with the head: the same patch term; gradients reach the head and the U-Net
    loss, parts = total_loss((net.numinst_head(feats), feats), (numinst, patches), "ppp",
                             head=net.patch_head, max_samples=n_one)
    assert float(parts["patch"]) == pytest.approx(float(want), rel=1e-5)
    loss.backward()
    assert net.patch_head.weight.grad.abs().sum() > 0
    assert next(net.unet.parameters()).grad.abs().sum() > 0
    # a subset: a mean over 50 of the one-instance pixels (between their extremes)
    sub = ppp_sampled_loss(feats.detach(), net.patch_head, patches, numinst, max_samples=50,
                           generator=torch.Generator().manual_seed(1))
    per_pixel = bce.detach().mean(dim=1)[one[:, 0]]
    assert n_one > 50
    assert per_pixel.min() - 1e-5 <= float(sub) <= per_pixel.max() + 1e-5
    assert float(sub) != pytest.approx(float(want), rel=1e-6)


def _synthetic_batch(patchshape):
    labels = np.zeros((32, 32), np.int64)
    labels[3:12, 4:13] = 1
    labels[14:24, 10:19] = 2
    labels[20:30, 22:30] = 3
    numinst, patches = instance_targets(labels, patchshape)
    rng = np.random.default_rng(0)
    image = (labels > 0).astype(np.float32) + 0.1 * rng.standard_normal(labels.shape)
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    return x, (torch.from_numpy(numinst)[None], torch.from_numpy(patches)[None])


@pytest.mark.parametrize("variant", ["ppp", "ppp+dec"])
def test_a_few_adam_steps_lower_the_loss(variant):
    torch.manual_seed(0)
    patchshape = (7, 7)
    x, targets = _synthetic_batch(patchshape)
    net = PatchPerPixNet(2, 1, patchshape, variant, base_features=8, depth=2,
                         code_shape=(8, 2, 2), decoder_features=(16, 8))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss, parts = total_loss(net(x), targets, variant, decoder=net.decoder, generator=gen)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(parts) == {"numinst", "patch"}
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("variant", ["ppp", "ppp+dec"])
def test_trace_matches_eager(variant):
    torch.manual_seed(0)
    net = PatchPerPixNet(2, 1, (9, 9), variant, base_features=4, depth=3).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        eager = net(x)
        other = torch.randn(2, 1, 16, 24)
        for a, b in zip(traced(x), eager):
            assert torch.allclose(a, b, atol=1e-6)
        # the trace is shape-generic: another batch and size still agree with eager
        for a, b in zip(traced(other), net(other)):
            assert torch.allclose(a, b, atol=1e-6)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="odd"):
        PatchPerPixNet(2, 1, (4, 5))
    with pytest.raises(ValueError, match="variant"):
        PatchPerPixNet(2, 1, (5, 5), "dense")
    with pytest.raises(ValueError, match="code_channels"):
        PatchPerPixNet(2, 1, (5, 5), "ppp+dec", code_channels=250)
    with pytest.raises(ValueError, match="decoder"):
        total_loss((torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2)),
                   (torch.zeros(1, 3, 2, 2), torch.zeros(1, 9, 2, 2)), "ppp+dec")

"""Training configuration, the training loop, checkpoints, prediction and their CLI commands.

Every run here is tiny (64x64 synthetic nuclei, a 4-feature U-Net, 7x7 patches) so that the
whole file takes seconds on a CPU.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ppp_zoo.cli import app
from ppp_zoo.config import (
    Config,
    config_from_dict,
    load_config,
    load_preset,
    parse_config,
    preset_names,
)
from ppp_zoo.predict import load_checkpoint, predict_image, predict_probabilities
from ppp_zoo.train import CropSampler, load_training_data, object_diameter, train

TINY = {
    "data": {"source": "synth-nuclei", "n_images": 3, "image_size": [64, 64],
             "val_fraction": 0.34, "seed": 1, "synth": {"n_nuclei": 8}},
    "model": {"patchshape": [7, 7], "base_features": 4, "depth": 2},
    "train": {"iterations": 30, "batch_size": 2, "crop_size": [32, 32], "lr": 3e-3,
              "val_every": 15, "seed": 0},
}

TINY_TOML = """
[data]
source = "synth-nuclei"
n_images = 2
image_size = [48, 48]
val_fraction = 0.5

[data.synth]
n_nuclei = 5

[model]
patchshape = "7x7"
base_features = 4
depth = 2

[train]
iterations = 4
batch_size = 1
crop_size = [32, 32]
val_every = 4
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    return train(TINY, out, device="cpu", progress=False), out


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("text, expected", [
    ("[model]\npatchsize = 9", "[model]: unknown key 'patchsize'"),
    ("[trian]\nlr = 1", "unknown section [trian]"),
    ("[train]\niterations = 'many'", "[train] iterations must be an integer, got string 'many'"),
    ("[train]\nlr = true", "[train] lr must be a number, got boolean"),
    ("[data]\nsource = 'web'", "[data] source must be one of"),
    ("[model]\npatchshape = [8, 8]", "[model] patchshape must be 2 or 3 odd sizes"),
    ("[train]\ncrop_size = [30, 30]", "[train] crop_size (30, 30) must be multiples of 4"),
    ("[postprocess]\npartition = 'xx'", "[postprocess] partition must be one of"),
    ("[postprocess]\npatch_treshold = 0.5", "[postprocess]: unknown key 'patch_treshold'"),
    ("[postprocess]\nfc_threshold = 'high'", "[postprocess] fc_threshold must be a number"),
    ("[data]\nsource = 'folder'", "[data] path is required"),
    ("[train]\npatch_samples = -1", "[train] patch_samples must be >= 0"),
    ("[train]\npatch_samples = 64\npatch_fg_weight = 4.0", "[train] patch_samples is for"),
])
def test_config_errors_name_section_and_key(text, expected):
    with pytest.raises(ValueError) as err:
        parse_config(text)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_config_file_error_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nbatch_size = 1.5\n")
    with pytest.raises(ValueError, match=r"bad.toml: \[train\] batch_size must be an integer"):
        load_config(path)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")


def test_defaults_and_round_trip_through_dict():
    cfg = parse_config("[model]\npatchshape = '9x9'\n[train]\ncrop_size = '64x64'")
    assert cfg.train.lr == 1e-4 and cfg.train.beta1 == 0.95
    assert cfg.model.patchshape == (9, 9) and cfg.train.crop_size == (64, 64)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.assembly_params(fast=True).fast


@pytest.mark.parametrize("name", ["nuclei2d-cpu", "worms-cpu", "dsb2018", "bbbc010", "nuclei3d"])
def test_presets_load_and_validate(name):
    assert name in preset_names()
    cfg = load_preset(name)
    assert isinstance(cfg, Config)
    params = cfg.assembly_params()
    assert params.patchshape == cfg.model.patchshape
    assert config_from_dict(cfg.to_dict()) == cfg


def test_nuclei2d_preset_never_sees_the_test_half():
    cfg = load_preset("nuclei2d-cpu")
    assert cfg.data.source == "dsb-sample" and cfg.data.val_strip == 48
    assert all(p <= 25 for p in cfg.model.patchshape)
    train_pairs, val_pairs = load_training_data(cfg)
    assert [img.shape for img, _ in train_pairs] == [(512, 208)]
    assert [img.shape for img, _ in val_pairs] == [(512, 48)]


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        load_preset("nope")


def test_preset_with_override_file(tmp_path):
    path = tmp_path / "o.toml"
    path.write_text("[train]\niterations = 7\n")
    cfg = load_config(path, preset="worms-cpu")
    assert cfg.train.iterations == 7 and cfg.data.source == "synth-worms"


# --------------------------------------------------------------------------- crops
def test_crops_have_foreground_and_match_targets():
    cfg = config_from_dict(TINY)
    train_pairs, _ = load_training_data(cfg)
    sampler = CropSampler(train_pairs, cfg, np.random.default_rng(0))
    image, numinst, patches = sampler.sample()
    assert image.shape == (1, 32, 32) and image.dtype == np.float32
    assert numinst.shape == (3, 32, 32) and patches.shape == (49, 32, 32)
    assert numinst[1:].sum() > 0.05 * 32 * 32
    # the patch centre channel is the foreground mask
    np.testing.assert_array_equal(patches[24], numinst[1])


def test_warped_crops_keep_image_and_targets_aligned():
    """Rotation + elastic resample the image and the labels through the same map.

    The image of a synthetic nuclei set is bright exactly on its nuclei, so after warping
    the bright pixels must coincide with the foreground of the warped targets.
    """
    cfg = config_from_dict(dict(TINY, train=dict(TINY["train"], rotate=45.0,
                                                 elastic_jitter=2.0, elastic_spacing=8)))
    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 12:40] = 1
    labels[36:56, 20:50] = 2
    image = (labels > 0).astype(np.float32)
    sampler = CropSampler([(image, labels)], cfg, np.random.default_rng(3))
    for _ in range(5):
        img, tgt = sampler._random_crop()
        assert img.shape == (32, 32) and tgt.shape == (32, 32)
        inside = img > 0.5
        fg = tgt > 0
        # linear vs nearest interpolation differ by at most a pixel along the edges
        assert (inside != fg).mean() < 0.15
        assert set(np.unique(tgt)) <= {0, 1, 2}


def test_warped_crops_of_overlapping_masks():
    cfg = config_from_dict({
        "data": {"source": "synth-worms", "overlapping": True, "n_images": 2,
                 "image_size": [96, 96], "val_fraction": 0.0,
                 "synth": {"n_worms": [4, 4], "length": [60.0, 70.0]}},
        "model": {"patchshape": [9, 9], "base_features": 4, "depth": 2},
        "train": {"crop_size": [32, 32], "rotate": 30.0, "overlap_fraction": 1.0}})
    train_pairs, _ = load_training_data(cfg)
    sampler = CropSampler(train_pairs, cfg, np.random.default_rng(0))
    assert sum(len(o) for o in sampler.overlaps) > 0
    n_overlap = 0
    for _ in range(6):
        image, numinst, patches = sampler.sample()
        assert image.shape == (1, 32, 32) and patches.shape == (81, 32, 32)
        n_overlap += int(numinst[2].sum() > 0)
    # crops centred on overlap pixels show overlaps (rotation keeps the centre in place)
    assert n_overlap >= 5


def test_object_diameter_of_disks():
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    labels[(yy - 45) ** 2 + (xx - 45) ** 2 <= 100] = 5
    d = object_diameter([(labels.astype(np.float32), labels)], overlapping=False)
    assert abs(d - 20.0) < 0.6


def test_threshold_tuning_never_lowers_validation_score(tmp_path):
    cfg = dict(TINY, train=dict(TINY["train"], iterations=20, val_every=20,
                                tune_thresholds=True))
    result = train(cfg, tmp_path, device="cpu", progress=False, snapshot_minutes=1e-4)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    tuned = best["tuned"]
    assert tuned["val"]["avAP"] >= result.best_avAP - 1e-9
    for key, value in tuned["changes"].items():
        assert best["assembly"][key] == value
    # snapshots were written and load as checkpoints
    snaps = sorted((tmp_path / "snapshots").glob("minute_*.pt"))
    assert snaps and load_checkpoint(snaps[0]).iteration >= 1


# --------------------------------------------------------------------------- training
def test_tiny_training_writes_outputs_and_learns(tiny_run):
    result, out = tiny_run
    for name in ("last.pt", "best.pt", "metrics.json"):
        assert (out / name).is_file()
    assert result.iterations == 30 and not result.stopped_early
    losses = [loss for _, loss in result.history["loss"]]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert [v["iteration"] for v in result.history["val"]] == [15, 30]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 30 and 0.0 <= metrics["best_avAP"] <= 1.0


def test_sampled_patch_loss_trains_and_learns(tmp_path):
    """[train] patch_samples: the patch head at sampled one-instance pixels only; the loss
    falls as with the dense loss, and the checkpoint assembles."""
    cfg = dict(TINY, train=dict(TINY["train"], patch_samples=256))
    result = train(cfg, tmp_path, device="cpu", progress=False)
    losses = [loss for _, loss in result.history["loss"]]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert load_checkpoint(tmp_path / "last.pt").config["train"]["patch_samples"] == 256


def test_checkpoint_contents(tiny_run):
    _, out = tiny_run
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["format_version"] == 1 and ckpt["iteration"] == 30
    assert ckpt["model_kwargs"]["patchshape"] == [7, 7]
    assert ckpt["config"]["train"]["lr"] == 3e-3
    assert ckpt["normalize"]["mode"] == "percentile"
    assert ckpt["assembly"]["patchshape"] == [7, 7] and not ckpt["assembly"]["fast"]
    assert len(ckpt["history"]["loss"]) == 30


def test_checkpoint_round_trip_gives_same_outputs(tmp_path):
    cfg = dict(TINY, train=dict(TINY["train"], iterations=3, val_every=3))
    result = train(cfg, tmp_path, device="cpu", progress=False)
    bundle = load_checkpoint(result.last_checkpoint)
    reloaded = load_checkpoint(result.last_checkpoint)
    x = torch.linspace(0, 1, 32 * 32).reshape(1, 1, 32, 32)
    with torch.no_grad():
        a = bundle.model(x)
        b = reloaded.model(x)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    # the weights equal those of a model trained in memory with the same seed
    again = train(cfg, tmp_path / "again", device="cpu", progress=False)
    third = load_checkpoint(again.last_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(third.model(x)[1], a[1])


def test_resume_continues_the_same_run(tmp_path):
    short = dict(TINY, train=dict(TINY["train"], iterations=4, val_every=2))
    long = dict(TINY, train=dict(TINY["train"], iterations=6, val_every=2))
    train(short, tmp_path / "r", device="cpu", progress=False)
    resumed = train(long, tmp_path / "r", device="cpu", progress=False, resume=True)
    fresh = train(long, tmp_path / "f", device="cpu", progress=False)
    assert resumed.iterations == 6
    np.testing.assert_allclose([loss for _, loss in resumed.history["loss"]],
                               [loss for _, loss in fresh.history["loss"]], rtol=1e-5)


def test_callback_sees_every_step_and_stop_keeps_the_checkpoints(tmp_path):
    """What a GUI needs: live loss and validation, and a cancel that leaves usable
    checkpoints (last.pt resumable) without threshold tuning."""
    cfg = dict(TINY, train=dict(TINY["train"], iterations=50, val_every=2,
                                tune_thresholds=True))
    events = []
    result = train(cfg, tmp_path, device="cpu", progress=False, callback=events.append,
                   stop=lambda: sum("loss" in e for e in events) >= 3)
    steps = [e for e in events if "loss" in e]
    assert [e["iteration"] for e in steps] == [1, 2, 3] and steps[0]["iterations"] == 50
    assert [e["iteration"] for e in events if "val" in e] == [2, 3]
    assert result.cancelled and result.stopped_early and result.iterations == 3
    assert "tuned" not in result.history
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    again = train(dict(cfg, train=dict(cfg["train"], iterations=4)), tmp_path, device="cpu",
                  progress=False, resume=True)
    assert again.iterations == 4 and not again.cancelled

def test_tiled_checkpoint_prediction_equals_untiled(tiny_run):
    result, _ = tiny_run
    bundle = load_checkpoint(result.best_checkpoint)
    image = np.random.default_rng(1).random((90, 130)).astype(np.float32)
    whole = predict_probabilities(bundle, image)
    tiled = predict_probabilities(bundle, image, tile=(48, 48))
    for a, b in zip(whole, tiled):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_predict_image_shape_and_dtype(tiny_run):
    result, _ = tiny_run
    bundle = load_checkpoint(result.best_checkpoint)
    image = np.random.default_rng(0).random((50, 70)).astype(np.float32)  # not a multiple of 2
    labels = predict_image(bundle, image)
    assert labels.shape == (50, 70) and labels.dtype == np.int32
    numinst, patches = predict_probabilities(bundle, image)
    assert numinst.shape == (3, 50, 70) and patches.shape == (49, 50, 70)
    assert predict_image(bundle, image, fast=True).shape == (50, 70)
    with pytest.raises(ValueError, match="this 2D model takes"):
        predict_image(bundle, np.zeros((4, 8, 8, 8)))
    # the rule of ppp-zoo segment: a 2-channel image is refused, not cut to its first channel
    with pytest.raises(ValueError, match="no channel axis of size 1"):
        predict_image(bundle, np.zeros((40, 40, 2)))


def test_load_checkpoint_errors(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(corrupt)
    ckpt = torch.load(tiny_run[0].last_checkpoint, weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "v99.pt")
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        load_checkpoint(tmp_path / "v99.pt")


# --------------------------------------------------------------------------- CLI
def test_cli_train_and_predict(tmp_path):
    import tifffile

    override = tmp_path / "tiny.toml"
    override.write_text(TINY_TOML)
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(override), "--preset", "nuclei2d-cpu",
                                 "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file() and (out / "metrics.json").is_file()

    image = tmp_path / "img.tif"
    tifffile.imwrite(image, (np.random.default_rng(0).random((40, 44)) * 1000).astype(np.uint16))
    result = runner.invoke(app, ["predict", str(out / "best.pt"), str(image),
                                 "-o", str(tmp_path / "pred"), "--fast"])
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "pred" / "img_labels.tif")
    assert labels.shape == (40, 44)


def test_cli_predict_bad_checkpoint(tmp_path):
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((16, 16), np.float32))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "nope.pt"), str(image),
                                      "-o", str(tmp_path / "pred")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.pt" in lines[0]
    assert not (tmp_path / "pred").exists()


def test_cli_train_config_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidth = 3\n")
    result = CliRunner().invoke(app, ["train", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "[model]: unknown key 'width'" in lines[0]


def test_ppp_dec_with_a_configured_decoder_trains_and_reloads(tmp_path):
    cfg = dict(TINY, model=dict(TINY["model"], variant="ppp+dec", code_shape=[2, 2, 2],
                                decoder_features=[8, 4]),
               train=dict(TINY["train"], iterations=6, val_every=6, decode_samples=64))
    result = train(cfg, tmp_path, device="cpu", progress=False)
    bundle = load_checkpoint(result.last_checkpoint)
    assert bundle.model.decoder.code_shape == (2, 2, 2)
    assert bundle.model.out_channels == 8
    numinst, patches = predict_probabilities(bundle, np.random.default_rng(0).random((40, 40)))
    assert numinst.shape == (3, 40, 40) and patches.shape == (49, 40, 40)


@pytest.mark.parametrize("model, message", [
    ({"code_shape": [4, 5, 5]}, "need variant = 'ppp+dec'"),
    ({"variant": "ppp+dec", "decoder_features": [16, 8]}, "decoder_features needs 1 entries"),
])
def test_decoder_config_errors(model, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict(dict(TINY, model=dict(TINY["model"], **model)))

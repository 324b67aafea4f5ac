"""Model structure: presets, priors, parameter counts, weights, summary and bad input.

Architecture checks build on the meta device (no memory, no compute), so full-size presets are
cheap here; numerical tests use the small ``mdssd_tiny`` preset.
"""

import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn

from mdssd.model import (Detector, build_model, get_config, load_checkpoint, load_vgg16_imagenet,
                         make_priors, save_checkpoint)
from mdssd.model.__main__ import main as summary_main
from mdssd.model.config import BackboneConfig, PriorConfig
from mdssd.model.summary import summarize
from mdssd.model.vgg import VGG16

SIZES = {  # SPEC "Prediction layers and priors"
    "mdssd300": ((75, 38, 19, 10, 5, 3, 1), 31_232),
    "mdssd512": ((128, 64, 32, 16, 8, 4, 2, 1), 90_100),
    "ssd300": ((38, 19, 10, 5, 3, 1), 8_732),
    "ssd512": ((64, 32, 16, 8, 4, 2, 1), 24_564),
    "mdssd_tiny": ((32, 16, 8, 4, 2, 1), 5_620),
}

# Pinned once from this code (21 classes); ssd300/ssd512 equal the well-known SSD VOC counts.
PARAMS = {
    "mdssd300_paper": 44_677_650,
    "mdssd512_paper": 43_614_760,
    "ssd300": 26_285_486,
    "ssd512": 27_188_676,
    "mdssd_tiny_paper": 3_236_236,
    # The default (gated) block adds per module the skip's L2Norm scales (the shallow map's
    # channels: 256 + 512 + 1024 in VGG, 64 + 128 + 256 in the tiny preset) and one gate.
    "mdssd300": 44_677_650 + 1792 + 3,
    "mdssd512": 43_614_760 + 1792 + 3,
    "mdssd_tiny": 3_236_236 + 448 + 3,
}
# BatchNorm after all 15 backbone convs: 2 x (64*2 + 128*2 + 256*3 + 512*6 + 1024*2) = 12,544.
PARAMS_BN = {"mdssd300_paper": 44_690_194, "mdssd300": 44_690_194 + 1795, "ssd300": 26_298_030}


def meta_model(name, **overrides):
    with torch.device("meta"):
        return Detector(get_config(name, **overrides))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SIZES))
def test_prior_counts_and_source_map_sizes(name):
    sizes, count = SIZES[name]
    model = meta_model(name)
    assert model.num_priors == count
    assert model.priors.shape == (count, 4)
    # The real forward (on meta tensors) produces exactly these maps, square.
    s = model.config.image_size
    features = model.features(torch.empty(2, 3, s, s, device="meta"))
    assert [tuple(f.shape[-2:]) for f in features] == [(m, m) for m in sizes]
    assert tuple(f.shape[1] for f in features) == model.source_channels
    loc, conf = model.head(features)
    assert loc.shape == (2, count, 4) and conf.shape == (2, count, 21)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_pinned(name):
    assert n_params(meta_model(name)) == PARAMS[name]


@pytest.mark.parametrize("name", sorted(PARAMS_BN))
def test_parameter_counts_batch_norm(name):
    model = meta_model(name, batch_norm=True)
    assert n_params(model) == PARAMS_BN[name]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 15


def test_parameter_count_follows_num_classes():
    # Only the conf heads change: sum over sources of priors_per_cell * (K' - K) * (9 C + 1).
    base, five = meta_model("mdssd300"), meta_model("mdssd300", num_classes=5)
    cfg = base.config
    expected = sum(n * (5 - 21) * (9 * c + 1)
                   for n, c in zip(cfg.priors.priors_per_cell(), base.source_channels))
    assert n_params(five) - n_params(base) == expected


def _deconv_trace(model, name):
    """(kernel, padding, output size) of each deconvolution of Fusion Block ``name``."""
    block = dict(zip((f.name for f in model.config.fusion), model.fusion))[name]
    trace = []
    hooks = [m.register_forward_hook(lambda m, i, o: trace.append((m.kernel_size[0], m.padding[0], o.shape[-1])))
             for m in block.modules() if isinstance(m, nn.ConvTranspose2d)]
    s = model.config.image_size
    model.features(torch.empty(1, 3, s, s, device="meta"))
    for h in hooks:
        h.remove()
    return trace


@pytest.mark.parametrize("name, module, expected", [
    # SPEC: 300 Module 1 10->19 (k3p1) ->38 (k2) ->75 (k3p1); Module 2 5->10->19->38; Module 3 3->5->10->19.
    ("mdssd300", "module1", [(3, 1, 19), (2, 0, 38), (3, 1, 75)]),
    ("mdssd300", "module2", [(2, 0, 10), (3, 1, 19), (2, 0, 38)]),
    ("mdssd300", "module3", [(3, 1, 5), (2, 0, 10), (3, 1, 19)]),
    ("mdssd512", "module1", [(2, 0, 32), (2, 0, 64), (2, 0, 128)]),
    ("mdssd512", "module2", [(2, 0, 16), (2, 0, 32), (2, 0, 64)]),
    ("mdssd512", "module3", [(2, 0, 8), (2, 0, 16), (2, 0, 32)]),
])
def test_fusion_deconvolutions_as_spec(name, module, expected):
    assert _deconv_trace(meta_model(name), module) == expected


def test_fusion_block_structure_and_scales():
    model = build_model("mdssd_tiny")
    for f, block in zip(model.config.fusion, model.fusion):
        assert torch.equal(block.scale_high, torch.full((64,), 10.0))
        assert torch.equal(block.scale_low, torch.full((64,), 20.0))
        assert block.eps == 1e-10
        assert block.merge[0].out_channels == f.out_channels
        assert [type(m) for m in block.upper] == [nn.ConvTranspose2d, nn.Conv2d, nn.ReLU] * 3
    assert model.conv4_3_norm is None
    assert build_model("mdssd_tiny", fusion_scale_high=7.0, l2norm_eps=1e-6).fusion[0].scale_high[0] == 7.0


def test_deconvolutions_that_miss_the_shallow_map_are_rejected():
    config = get_config("mdssd300")
    wrong = (dataclasses.replace(config.fusion[0], deconv_kernels=(2, 2, 2)),)
    with pytest.raises(ValueError, match=r"module1's deconvolutions \(2, 2, 2\).*80.*75"):
        with torch.device("meta"):
            Detector(config.replace(fusion=wrong + config.fusion[1:]))


def test_sources_must_match_prior_maps():
    config = get_config("ssd300")
    with pytest.raises(ValueError, match="prior config expects"):
        with torch.device("meta"):
            Detector(config.replace(priors=get_config("mdssd300").priors))


def naive_priors(config: PriorConfig, image_size: int):
    """Classic SSD PriorBox loops, written independently of make_priors."""
    out = []
    for k, f in enumerate(config.feature_maps):
        f_k = image_size / config.steps[k]
        for i, j in itertools.product(range(f), repeat=2):
            cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
            s_k = config.min_sizes[k] / image_size
            out.append([cx, cy, s_k, s_k])
            s_prime = math.sqrt(s_k * (config.max_sizes[k] / image_size))
            out.append([cx, cy, s_prime, s_prime])
            for ar in config.aspect_ratios[k]:
                out.append([cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)])
                out.append([cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)])
    return torch.tensor(out, dtype=torch.float64).clamp(0, 1).float()


@pytest.mark.parametrize("name", ["ssd300", "mdssd_tiny"])
def test_priors_match_the_classic_prior_box(name):
    config = get_config(name)
    assert torch.equal(make_priors(config.priors, config.image_size), naive_priors(config.priors, config.image_size))


def test_mdssd300_priors_first_cell():
    priors = build_model("mdssd_tiny").priors  # buffer is float32 on the model's device
    assert priors.dtype == torch.float32
    config = get_config("mdssd300")
    p = make_priors(config.priors, 300)
    c = 0.5 * 4 / 300
    expected = [[c, c, 20 / 300, 20 / 300], [c, c, math.sqrt(600) / 300, math.sqrt(600) / 300],
                [c, c, 20 * math.sqrt(2) / 300, 20 / math.sqrt(2) / 300],
                [c, c, 20 / math.sqrt(2) / 300, 20 * math.sqrt(2) / 300]]
    torch.testing.assert_close(p[:4], torch.tensor(expected))
    assert p.min() >= 0 and p.max() <= 1
    assert torch.equal(p[-4], torch.tensor([0.5, 0.5, 264 / 300, 264 / 300]))  # 1x1 map, first box
    assert torch.equal(p[-1], torch.tensor([0.5, 0.5, 264 / 300 / math.sqrt(2), 1.0]))  # clipped


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("mdssd_tiny", num_classes=5).eval()


def test_wrong_image_size_is_named(tiny):
    with pytest.raises(ValueError, match="mdssd_tiny expects 128x128 images, got 300x300"):
        tiny(torch.zeros(1, 3, 300, 300))


def test_wrong_channel_count_is_named(tiny):
    with pytest.raises(ValueError, match="3-channel RGB images, got 1 channels"):
        tiny(torch.zeros(1, 1, 128, 128))
    with pytest.raises(ValueError, match=r"expects images \[B,3,128,128\], got shape \(3, 128, 128\)"):
        tiny(torch.zeros(3, 128, 128))


def _targets(labels, counts):
    labels = torch.tensor(labels)
    boxes = torch.tensor([0.1, 0.1, 0.5, 0.6]).expand(*labels.shape, 4).clone()
    return boxes, labels, torch.tensor(counts)


@pytest.fixture(scope="module")
def tiny_outputs(tiny):
    with torch.no_grad():
        return tiny(torch.randn(2, 3, 128, 128))


@pytest.mark.parametrize("labels, counts, message", [
    ([[1, 5], [2, 0]], [2, 1], r"image 0, ground truth 1 has label 5; real labels must be in 1..4"),
    ([[1, 2], [0, 3]], [2, 2], r"image 1, ground truth 0 has label 0; .*0 is background"),
    ([[1, 2], [-1, 0]], [2, 1], r"image 1, ground truth 0 has label -1"),
    ([[1, 2], [1, 0]], [2, 3], r"gt_counts must be in \[0, 2\]"),
])
def test_labels_and_counts_out_of_range_are_named(tiny, tiny_outputs, labels, counts, message):
    with pytest.raises(ValueError, match=message):
        tiny.loss(*tiny_outputs, *_targets(labels, counts))


def test_padding_labels_are_not_checked(tiny, tiny_outputs):
    # Rows past gt_counts are padding: any label there is ignored.
    losses = tiny.loss(*tiny_outputs, *_targets([[1, 99], [4, -7]], [1, 1]))
    assert torch.isfinite(losses["total"])


def test_target_shapes_are_named(tiny, tiny_outputs):
    boxes, labels, counts = _targets([[1, 2], [1, 2]], [2, 2])
    with pytest.raises(ValueError, match=r"gt_boxes must be \[B=2,G,4\]"):
        tiny.loss(*tiny_outputs, boxes[:1], labels, counts)
    with pytest.raises(ValueError, match=r"gt_labels must be \[B=2,G=2\]"):
        tiny.loss(*tiny_outputs, boxes, labels[:, :1], counts)


def test_non_finite_loss_is_named(tiny, tiny_outputs):
    loc, conf = (t.clone() for t in tiny_outputs)
    conf[1, 7, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite conf loss"):
        tiny.loss(loc, conf, *_targets([[1, 2], [3, 4]], [2, 2]))
    boxes, labels, counts = _targets([[1, 2], [3, 4]], [2, 2])
    boxes[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite box: image 0, ground truth 0"):
        tiny.loss(*tiny_outputs, boxes, labels, counts)


def test_unknown_preset_and_backend_are_named():
    with pytest.raises(ValueError, match="unknown model preset 'mdssd301'"):
        build_model("mdssd301")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        build_model("mdssd_tiny", backend="cuda")
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("mdssd_tiny", num_classes=1)


# ---------------------------------------------------------------------------------------------
# Weights


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model("mdssd_tiny", num_classes=7, batch_norm=True, backend="reference")
    model.train()
    model(torch.randn(2, 3, 128, 128))  # moves the BatchNorm running statistics off their init
    model.eval()
    path = tmp_path / "tiny.pt"
    save_checkpoint(model, path, epoch=3)
    loaded = load_checkpoint(path).eval()
    assert loaded.config == model.config
    assert loaded.backend.name == "ext"
    assert torch.load(path, weights_only=True)["extra"] == {"epoch": 3}
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mdssd checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def torchvision_vgg16_state_dict(batch_norm: bool, classifier: bool):
    """Keys and shapes of torchvision's ``vgg16``/``vgg16_bn`` written from its layer list:
    ``features`` is conv, [bn], relu per channel entry and one max-pool per "M"."""
    state, index, in_channels = {}, 0, 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, in_channels, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(item)
        if batch_norm:
            state[f"features.{index + 1}.weight"] = torch.rand(item)
            state[f"features.{index + 1}.bias"] = torch.randn(item)
            state[f"features.{index + 1}.running_mean"] = torch.randn(item)
            state[f"features.{index + 1}.running_var"] = torch.rand(item)
            state[f"features.{index + 1}.num_batches_tracked"] = torch.tensor(7)
        index += 3 if batch_norm else 2
        in_channels = item
    if classifier:
        # fc6 [4096, 25088] and fc7 [4096, 4096] without the memory: value(r, k) = r + k.
        state["classifier.0.weight"] = torch.arange(4096 + 25088.0).as_strided((4096, 25088), (1, 1))
        state["classifier.0.bias"] = torch.arange(4096.0)
        state["classifier.3.weight"] = torch.arange(2 * 4096.0).as_strided((4096, 4096), (1, 1))
        state["classifier.3.bias"] = -torch.arange(4096.0)
        state["classifier.6.weight"] = torch.zeros(1000, 4096)
        state["classifier.6.bias"] = torch.zeros(1000)
    return state


@pytest.mark.parametrize("batch_norm", [False, True])
def test_load_torchvision_vgg16_file(tmp_path, batch_norm):
    state = torchvision_vgg16_state_dict(batch_norm, classifier=not batch_norm)
    path = tmp_path / "vgg16.pth"
    torch.save({k: v.clone() if k.startswith("features") else v for k, v in state.items()}, path)
    backbone = VGG16(BackboneConfig(batch_norm=batch_norm))
    conv6, conv7 = backbone.conv_index["conv6"], backbone.conv_index["conv7"]
    conv6_before = backbone.features[conv6].weight.detach().clone()
    loaded = load_vgg16_imagenet(backbone, path)
    ours = backbone.state_dict()
    for key, value in state.items():
        if key.startswith("features."):
            assert torch.equal(ours[key], value), key
    # conv1_1, conv3_3 and conv5_3 are where torchvision has them.
    step = 3 if batch_norm else 2
    assert backbone.conv_index["conv1_1"] == 0
    assert backbone.conv_index["conv3_3"] == 6 * step + 2 and backbone.conv_index["conv5_3"] == 12 * step + 4
    if batch_norm:
        assert torch.equal(backbone.features[conv6].weight, conv6_before)  # no fc in the file
        assert f"features.{conv6}.weight" not in loaded
        return
    # SSD's decimation: conv6[o, c, i, j] = fc6[4 o, c*49 + 3i*7 + 3j]; conv7[o, c] = fc7[4 o, 4 c].
    w6 = backbone.features[conv6].weight
    o, c, i, j = 5, 17, 2, 1
    assert w6.shape == (1024, 512, 3, 3)
    assert w6[o, c, i, j] == 4 * o + c * 49 + 3 * i * 7 + 3 * j
    assert torch.equal(backbone.features[conv6].bias, torch.arange(0, 4096.0, 4))
    w7 = backbone.features[conv7].weight
    assert w7.shape == (1024, 1024, 1, 1) and w7[9, 3, 0, 0] == 4 * 9 + 4 * 3
    assert torch.equal(backbone.features[conv7].bias, -torch.arange(0, 4096.0, 4))


def test_load_vgg16_into_model_and_mismatches_named():
    plain = torchvision_vgg16_state_dict(batch_norm=False, classifier=False)
    model = meta_model("ssd300").to_empty(device="cpu")
    assert len(load_vgg16_imagenet(model.backbone, plain)) == 26
    assert torch.equal(model.backbone.features[28].weight, plain["features.28.weight"])
    with pytest.raises(ValueError, match="features.1.weight has no counterpart.*batch_norm=False"):
        load_vgg16_imagenet(model.backbone, torchvision_vgg16_state_dict(batch_norm=True, classifier=False))
    with pytest.raises(ValueError, match=r"features.0.weight: file has shape \(64, 3, 3, 3\), backbone "
                                         r"expects \(16, 3, 3, 3\)"):
        load_vgg16_imagenet(build_model("mdssd_tiny").backbone, plain)
    with pytest.raises(ValueError, match="lacks"):
        load_vgg16_imagenet(model.backbone, {k: v for k, v in plain.items() if k != "features.10.bias"})
    with pytest.raises(ValueError, match="not a torchvision vgg16 state dict"):
        load_vgg16_imagenet(model.backbone, {"backbone.0.weight": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------
# Summary


def test_summary_command(capsys):
    summary_main(["mdssd300_paper"])
    out = capsys.readouterr().out
    assert "priors: 31,232" in out and "parameters: 44,677,650" in out
    assert "module1         256    75            4   22,500" in out
    assert "Deconv 512->256 k3 s1 p1" not in out and "Deconv 512->256 k3 s2 p1" in out


def test_summary_counts_ssd300_macs():
    # SSD300 (VGG16) is about 31.4 G multiply-accumulates per image in the literature; exact here:
    # hand-count of the VGG part: conv1_1 = 300*300*64*27.
    rows, totals = summarize(get_config("ssd300"))
    assert rows[0].macs == 300 * 300 * 64 * 27
    assert 31.0e9 < totals["macs"] < 31.8e9
    assert totals["params"] == PARAMS["ssd300"] and totals["priors"] == 8_732
    _, md = summarize(get_config("mdssd300"))
    assert md["macs"] > totals["macs"]  # the Fusion Blocks cost extra compute

"""ResNet MDSSD/SSD presets (mdssd.model.resnet): map sizes and Fusion pairing, torchvision
``resnet101`` weights loaded from a local file, and the small ResNet preset training on the CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from mdssd import config as cfgmod
from mdssd import train as train_mod
from mdssd.model import Detector, get_config, load_resnet_imagenet
from mdssd.model.config import BackboneConfig
from mdssd.model.resnet import ResNet

# (preset, source names, map sizes, priors) as docs/model.md states them.
EXPECTED = [
    ("mdssd320_resnet101", ("module1", "module2", "module3", "layer4", "extra1_2", "extra2_2", "extra3_2"),
     (80, 40, 20, 10, 5, 3, 1), 35_190),
    ("mdssd512_resnet101", ("module1", "module2", "module3", "layer4", "extra1_2", "extra2_2", "extra3_2",
                            "extra4_2"), (128, 64, 32, 16, 8, 4, 2, 1), 90_100),
    ("ssd320_resnet101", ("layer2", "layer3", "layer4", "extra1_2", "extra2_2", "extra3_2"),
     (40, 20, 10, 5, 3, 1), 9_590),
    ("ssd512_resnet101", ("layer2", "layer3", "layer4", "extra1_2", "extra2_2", "extra3_2", "extra4_2"),
     (64, 32, 16, 8, 4, 2, 1), 24_564),
    ("mdssd_resnet_tiny", ("module1", "module2", "module3", "layer4", "extra1_2", "extra2_2"),
     (32, 16, 8, 4, 2, 1), 5_620),
    ("ssd_resnet_tiny", ("layer2", "layer3", "layer4", "extra1_2", "extra2_2"), (16, 8, 4, 2, 1), 1_524),
]


def meta_model(name, **overrides):
    with torch.device("meta"):
        return Detector(get_config(name, **overrides))


@pytest.mark.parametrize("name, sources, sizes, priors", EXPECTED)
def test_map_sizes_and_pairing(name, sources, sizes, priors):
    model = meta_model(name)
    config = model.config
    assert config.sources == sources and model.source_sizes == sizes and model.num_priors == priors
    with torch.no_grad():
        maps = model.features(torch.empty(1, 3, config.image_size, config.image_size, device="meta"))
    assert tuple(m.shape[-1] for m in maps) == sizes
    backbone_sizes = model.backbone.output_sizes(config.image_size)
    strides = {k: config.image_size / v for k, v in backbone_sizes.items()}
    assert [round(strides[f"layer{i}"]) for i in (1, 2, 3, 4)] == [4, 8, 16, 32]
    # The paper's rule: every Fusion Block joins a shallow map to one 8x coarser, at the shallow
    # map's channels (256, 512, 1024 at full width, as VGG's conv3_3, conv4_3, conv7).
    sizes_by_name = dict(zip(sources, sizes)) | backbone_sizes
    for f in config.fusion:
        deep = backbone_sizes.get(f.high) or model.extras.output_sizes(backbone_sizes["layer4"])[f.high]
        assert math.isclose(backbone_sizes[f.low] / deep, 8, rel_tol=0.2), f.name
        assert f.out_channels == model.backbone.channels[f.low] and sizes_by_name[f.name] == backbone_sizes[f.low]


def test_full_width_channels_are_resnet101s():
    backbone = meta_model("mdssd320_resnet101").backbone
    assert backbone.channels == {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    assert [len(getattr(backbone, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 23, 3]
    n = sum(p.numel() for p in backbone.parameters())
    assert n == 42_500_160  # torchvision resnet101 (44,549,160) less its fc (2048 x 1000 + 1000)


def torchvision_resnet_state_dict(blocks, width=64, seed=0):
    """A randomly initialised state dict in torchvision's ``resnet`` layout (Bottleneck, v1.5),
    written from its structure: conv1/bn1, then per stage ``layer<s>.<b>.conv1..3/bn1..3`` with
    ``downsample.0/1`` in each stage's first block, then ``fc``."""
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name, cout, cin, k):
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2 / (cin * k * k))

    def bn(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        state[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    cin = width
    for s, n in enumerate(blocks):
        w = width * 2 ** s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            conv(f"{p}.conv1", w, cin, 1), bn(f"{p}.bn1", w)
            conv(f"{p}.conv2", w, w, 3), bn(f"{p}.bn2", w)
            conv(f"{p}.conv3", 4 * w, w, 1), bn(f"{p}.bn3", 4 * w)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * w, cin, 1), bn(f"{p}.downsample.1", 4 * w)
            cin = 4 * w
    state["fc.weight"] = torch.randn(1000, cin, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


def reference_resnet(state, blocks, x):
    """torchvision's ResNet forward in eval mode, written with functional ops over the state dict:
    the stride of a block sits on its 3x3 conv (v1.5) and on its downsample."""
    def bn(name, y):
        return F.batch_norm(y, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                            state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-5)

    y = F.relu(bn("bn1", F.conv2d(x, state["conv1.weight"], stride=2, padding=3)))
    y = F.max_pool2d(y, 3, 2, 1)
    outs = []
    for s, n in enumerate(blocks):
        for b in range(n):
            p, stride = f"layer{s + 1}.{b}", 2 if (b == 0 and s > 0) else 1
            z = F.relu(bn(f"{p}.bn1", F.conv2d(y, state[f"{p}.conv1.weight"])))
            z = F.relu(bn(f"{p}.bn2", F.conv2d(z, state[f"{p}.conv2.weight"], stride=stride, padding=1)))
            z = bn(f"{p}.bn3", F.conv2d(z, state[f"{p}.conv3.weight"]))
            identity = bn(f"{p}.downsample.1", F.conv2d(y, state[f"{p}.downsample.0.weight"], stride=stride)) \
                if b == 0 else y
            y = F.relu(z + identity)
        outs.append(y)
    return outs


def test_load_torchvision_resnet101_file(tmp_path):
    state = torchvision_resnet_state_dict((3, 4, 23, 3))
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    model = meta_model("mdssd320_resnet101", num_classes=3).to_empty(device="cpu")
    loaded = load_resnet_imagenet(model.backbone, path)
    assert len(loaded) == len(state) - 2 and not any(k.startswith("fc.") for k in loaded)
    ours = model.backbone.state_dict()
    for key in loaded:
        assert torch.equal(ours[key], state[key]), key


def test_loaded_backbone_computes_torchvisions_forward(tmp_path):
    # A narrow two-blocks-per-stage ResNet keeps this fast; the layout is the same code path.
    blocks, width = (2, 2, 2, 2), 8
    state = torchvision_resnet_state_dict(blocks, width, seed=1)
    backbone = ResNet(BackboneConfig(arch="resnet", resnet_blocks=blocks, resnet_width=width)).eval()
    load_resnet_imagenet(backbone, state)
    x = torch.randn(2, 3, 70, 70)
    with torch.no_grad():
        ours = backbone(x)
        expected = reference_resnet(state, blocks, x)
    for name, ref in zip(("layer1", "layer2", "layer3", "layer4"), expected):
        assert ours[name].shape == ref.shape and torch.allclose(ours[name], ref, atol=1e-5), name
    assert [ours[f"layer{i}"].shape[-1] for i in (1, 2, 3, 4)] == \
        [v for v in backbone.output_sizes(70).values()] == [18, 9, 5, 3]


def test_wrong_resnet_files_are_named():
    backbone = ResNet(BackboneConfig(arch="resnet", resnet_blocks=(1, 1, 1, 1), resnet_width=16))
    good = torchvision_resnet_state_dict((1, 1, 1, 1), 16)
    with pytest.raises(ValueError, match=r"unexpected keys \['layer1.1.conv1.weight'"):
        load_resnet_imagenet(backbone, torchvision_resnet_state_dict((2, 1, 1, 1), 16))  # deeper file
    with pytest.raises(ValueError, match="lacks.*layer4.0.bn3.running_var"):
        load_resnet_imagenet(backbone, {k: v for k, v in good.items() if k != "layer4.0.bn3.running_var"})
    with pytest.raises(ValueError, match=r"conv1.weight: file has shape \(32, 3, 7, 7\), backbone expects "
                                         r"\(16, 3, 7, 7\)"):
        load_resnet_imagenet(backbone, torchvision_resnet_state_dict((1, 1, 1, 1), 32))
    with pytest.raises(ValueError, match="unknown backbone arch"):
        Detector(get_config("mdssd_resnet_tiny").replace(backbone=BackboneConfig(arch="vgg19")))


def test_small_resnet_preset_trains_from_a_pretrained_file(tmp_path):
    state = torchvision_resnet_state_dict((1, 1, 1, 1), 16)
    weights = tmp_path / "resnet_tiny.pth"
    torch.save(state, weights)
    threads = torch.get_num_threads()
    try:
        cfg = cfgmod.from_args([
            "--preset", "mdssd_resnet_tiny", "--pretrained-backbone", str(weights), "--steps", "3",
            "--synthetic-train-images", "8", "--synthetic-val-images", "2", "--batch-size", "4",
            "--workers", "0", "--eval-interval", "0", "--checkpoint-interval", "0", "--warmup-steps", "1",
            "--no-progress", "--no-tensorboard", "--threads", "1", "--out-dir", str(tmp_path / "run")])
        summary = train_mod.train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 3
    checkpoint = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    # The pretrained stem moved by at most three SGD steps from the file's weights.
    moved = (checkpoint["model"]["backbone.conv1.weight"] - state["conv1.weight"]).abs().max()
    assert 0 < moved < 0.05

"""The Fusion Block's options (``fusion_norm``, ``fusion_deconv_init``): what they build and how
the deconvolutions start."""

import pytest
import torch
from torch import nn

from mdssd.model import build_model
from mdssd.model.config import FusionConfig
from mdssd.model.fusion import FusionBlock, init_deconv_upsample, upsample_kernel


def _block(**options):
    config = FusionConfig("m", "low", "high", 8, (3, 2, 3))
    return FusionBlock(config, low_channels=6, high_channels=12, width=4, scale_low=20, scale_high=10,
                       eps=1e-10, backend="reference", **options)


def test_paper_block_keeps_its_layout_and_keys():
    paper = build_model("mdssd_tiny_paper", num_classes=3, backend="reference")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper.fusion.modules())
    assert "fusion.0.lower.weight" in paper.state_dict()  # checkpoints of the paper's block still load


def test_batch_norm_after_every_branch_conv():
    block = _block(norm="batch")
    kinds = [type(m).__name__ for m in block.upper]
    assert kinds == ["ConvTranspose2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "ReLU"] * 3
    assert [type(m).__name__ for m in block.lower] == ["Conv2d", "BatchNorm2d"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block.merge)
    out = block(torch.randn(2, 6, 11, 11), torch.randn(2, 12, 2, 2))  # 2 -> 3 -> 6 -> 11
    assert out.shape == (2, 8, 11, 11)


def test_upsample_init_interpolates():
    # Kernel 3 (2n - 1): input pixels kept, new pixels the mean of their two neighbours.
    deconv = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1)
    init_deconv_upsample(deconv)
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])
    expected = torch.tensor([[1, 2, 3], [3, 4, 5], [5, 6, 7]], dtype=torch.float32)
    assert torch.allclose(deconv(x)[0, 0], expected)
    # Kernel 2 (2n): nearest neighbour. Channels fold (12 -> 4 averages 3 inputs each; 2 -> 4 repeats).
    deconv = nn.ConvTranspose2d(12, 4, 2, stride=2)
    init_deconv_upsample(deconv)
    x = torch.arange(12.0).view(1, 12, 1, 1).expand(1, 12, 2, 2)
    y = deconv(x)
    assert y.shape == (1, 4, 4, 4)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([4.0, 5.0, 6.0, 7.0]))  # mean of c, c+4, c+8
    widen = nn.ConvTranspose2d(2, 4, 2, stride=2)
    init_deconv_upsample(widen)
    assert torch.allclose(widen(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))[0, :, 1, 1], torch.tensor([1.0, 2, 1, 2]))
    assert torch.equal(upsample_kernel(2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="kernel must be 2 or 3"):
        upsample_kernel(4)


def test_upsample_init_in_the_block_and_bad_options():
    block = _block(deconv_init="upsample")
    deconvs = [m for m in block.upper if isinstance(m, nn.ConvTranspose2d)]
    assert all(torch.count_nonzero(d.bias) == 0 for d in deconvs)
    assert torch.allclose(deconvs[1].weight[0, 0], torch.ones(2, 2)) and deconvs[1].weight[0, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="norm must be one of"):
        _block(norm="group")
    with pytest.raises(ValueError, match="deconv_init must be one of"):
        _block(deconv_init="bilinear")


def test_candidate_presets_differ_only_in_the_block():
    base = build_model("mdssd_tiny_paper", num_classes=3).config.replace(name="mdssd_tiny")
    for name, norm, init, conv in [("mdssd_tiny_bn", "batch", "xavier", "xavier"),
                                   ("mdssd_tiny_up", "none", "upsample", "xavier"),
                                   ("mdssd_tiny_bn_up", "batch", "upsample", "xavier"),
                                   ("mdssd_tiny_id", "none", "upsample", "identity")]:
        config = build_model(name, num_classes=3).config
        assert (config.fusion_norm, config.fusion_deconv_init, config.fusion_conv_init) == (norm, init, conv)
        assert config.replace(name=base.name, fusion_norm="none", fusion_deconv_init="xavier",
                              fusion_conv_init="xavier") == base
        assert config.fusion_skip == "none"  # the candidates were measured on the paper's block


def test_identity_block_starts_as_the_normalised_shallow_map_plus_deep_context():
    from mdssd.model.fusion import init_conv_identity

    conv = nn.Conv2d(6, 4, 3, padding=1)
    init_conv_identity(conv)
    x = torch.randn(1, 6, 5, 5)
    expected = torch.stack([(x[0, 0] + x[0, 4]) / 2, (x[0, 1] + x[0, 5]) / 2, x[0, 2], x[0, 3]])
    assert torch.allclose(conv(x)[0], expected, atol=1e-6)

    block = _block(deconv_init="upsample", conv_init="identity")
    low, high = torch.rand(1, 6, 11, 11), torch.rand(1, 12, 2, 2)
    with torch.no_grad():
        out = block(low, high)
        lower = block.lower(low)
        up = torch.stack([high[0, c::4].mean(0) for c in range(4)])[None]  # 12 -> 4 channels: means of 3
        for d in block.upper:  # the deep map, upsampled only
            if isinstance(d, nn.ConvTranspose2d):
                up = nn.functional.conv_transpose2d(up, upsample_kernel(d.kernel_size[0]).expand(4, 1, -1, -1).contiguous(),
                                                    stride=2, padding=d.padding[0], groups=4)
        fused = 20 * lower / lower.norm(dim=1, keepdim=True) + 10 * up / up.norm(dim=1, keepdim=True)
        expected = torch.relu(torch.cat([fused, fused], 1))  # merge widens 4 -> 8 by repetition
    assert torch.allclose(lower, torch.stack([(low[0, c] + low[0, c + 4]) / 2 if c < 2 else low[0, c]
                                              for c in range(4)])[None], atol=1e-6)
    assert torch.allclose(out, expected, atol=1e-4)
    with pytest.raises(ValueError, match="conv_init must be one of"):
        _block(conv_init="dirac")


def test_gated_skip_starts_as_the_twins_normalised_shallow_map():
    low, high = torch.rand(2, 8, 11, 11), torch.rand(2, 12, 2, 2)
    block = FusionBlock(FusionConfig("m", "low", "high", 8, (3, 2, 3)), low_channels=8, high_channels=12,
                        width=4, scale_low=20, scale_high=10, eps=1e-10, backend="reference", skip="gated")
    assert block.gate.item() == 0.0
    out = block(low, high)
    assert torch.allclose(out, 20 * low / low.norm(dim=1, keepdim=True), atol=1e-5)
    # The gate is the one fusion parameter with a gradient at step 0; once open, the block adds to it.
    out.square().sum().backward()
    assert block.gate.grad.abs() > 0 and block.merge[0].weight.grad.abs().sum() == 0
    with torch.no_grad():
        block.gate.fill_(0.5)
        paper = torch.relu(block.merge[0](block.backend.l2norm_sum(block.lower(low), block.upper(high), block.scale_low,
                                                                   block.scale_high, 1e-10)))
        assert torch.allclose(block(low, high), block.skip_norm(low) + 0.5 * paper, atol=1e-5)


def test_gated_skip_needs_matching_channels_and_a_known_name():
    with pytest.raises(ValueError, match="must be equal"):
        _block(skip="gated")  # 6 shallow channels, 8 out
    with pytest.raises(ValueError, match="skip must be one of"):
        _block(skip="residual")
    paper = build_model("mdssd_tiny_paper", num_classes=3, backend="reference")
    assert not any(k.startswith("fusion.0.gate") or "skip_norm" in k for k in paper.state_dict())
    gated = build_model("mdssd_tiny_gated", num_classes=3, backend="reference")
    assert gated.config.replace(name="mdssd_tiny_paper", fusion_skip="none") == paper.config
    assert {"fusion.0.gate", "fusion.2.skip_norm.weight"} <= set(gated.state_dict())


def test_every_mdssd_preset_defaults_to_the_gated_block_and_keeps_the_paper_block_by_name():
    from mdssd.model.config import MDSSD_PRESETS, PRESETS

    for name in MDSSD_PRESETS:
        assert PRESETS[name].fusion_skip == "gated"
        assert PRESETS[f"{name}_paper"] == PRESETS[name].replace(name=f"{name}_paper", fusion_skip="none")
    assert PRESETS["mdssd_tiny"] == PRESETS["mdssd_tiny_gated"].replace(name="mdssd_tiny")
    for twin in ("ssd_tiny", "ssd_tiny_s4", "ssd300", "ssd300_s4", "ssd_resnet_tiny"):
        assert PRESETS[twin].fusion_skip == "none" and PRESETS[twin].fusion == ()


def test_checkpoints_from_before_the_gated_default_load_as_the_paper_block():
    from mdssd.model.config import ModelConfig, PRESETS

    # A model config saved before fusion_skip existed (the paper's block was the only one).
    saved = PRESETS["mdssd_tiny_paper"].replace(name="mdssd_tiny").to_dict()
    del saved["fusion_skip"]
    assert ModelConfig.from_dict(saved).fusion_skip == "none"

"""The ablation presets: the SSD twin of the small preset and the stride-4 twins that isolate the
Fusion Block (SSD + conv3_3 with its own L2Norm + MDSSD's priors, no Fusion Blocks)."""

import pytest
import torch

from mdssd.model import Detector, get_config
from mdssd.model.__main__ import main as summary_main
from mdssd.model.fusion import L2Norm

# Source map sides and prior counts (21 classes); parameters pinned once from this code.
SIZES = {
    "ssd_tiny": ((16, 8, 4, 2, 1), 1_524, 2_164_776),
    "ssd_tiny_s4": ((32, 16, 8, 4, 2, 1), 5_620, 2_222_540),
    "ssd300_s4": ((75, 38, 19, 10, 5, 3, 1), 31_232, 26_516_242),
    "ssd512_s4": ((128, 64, 32, 16, 8, 4, 2, 1), 90_100, 27_419_432),
}
# Each stride-4 twin against the MDSSD model it isolates the Fusion Block of.
TWINS = {"ssd_tiny_s4": "mdssd_tiny", "ssd300_s4": "mdssd300", "ssd512_s4": "mdssd512"}


def meta_model(name):
    with torch.device("meta"):
        return Detector(get_config(name))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_map_sizes_prior_and_parameter_counts(name):
    sizes, priors, params = SIZES[name]
    model = meta_model(name)
    s = model.config.image_size
    features = model.features(torch.empty(1, 3, s, s, device="meta"))
    assert [tuple(f.shape[-2:]) for f in features] == [(m, m) for m in sizes]
    assert model.num_priors == priors == model.config.priors.num_priors()
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.fusion) == 0


@pytest.mark.parametrize("name", sorted(TWINS))
def test_stride4_twin_has_mdssds_prediction_layers_without_fusion(name):
    twin, mdssd = meta_model(name), meta_model(TWINS[name])
    assert twin.config.priors == mdssd.config.priors
    assert twin.source_sizes == mdssd.source_sizes
    # The heads see the same channel counts: the Fusion Blocks output the shallow map's width.
    assert twin.source_channels == mdssd.source_channels
    assert twin.config.sources[:2] == ("conv3_3", "conv4_3")
    assert twin.config.backbone == mdssd.config.backbone and twin.config.extras == mdssd.config.extras
    assert isinstance(twin.conv3_3_norm, L2Norm) and isinstance(twin.conv4_3_norm, L2Norm)
    assert mdssd.conv3_3_norm is None and mdssd.conv4_3_norm is None


def test_ssd_tiny_is_mdssd_tiny_without_fusion_and_its_stride4_layer():
    ssd, mdssd = get_config("ssd_tiny"), get_config("mdssd_tiny")
    assert ssd.fusion == () and ssd.backbone == mdssd.backbone and ssd.extras == mdssd.extras
    assert ssd.sources == ("conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2")
    for field in ("feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios"):
        assert getattr(ssd.priors, field) == getattr(mdssd.priors, field)[1:]


def test_conv3_3_norm_scale_is_its_own_field():
    model = Detector(get_config("ssd_tiny_s4", conv3_3_l2norm_scale=7.0))
    assert torch.all(model.conv3_3_norm.weight == 7.0)
    assert torch.all(model.conv4_3_norm.weight == model.config.ssd_l2norm_scale)


def test_summary_prints_the_stride4_source(capsys):
    summary_main(["ssd_tiny_s4"])
    out = capsys.readouterr().out
    assert "conv3_3          64    32            4    4,096" in out and "priors: 5,620" in out

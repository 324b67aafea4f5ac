"""Per-layer evaluation (``mdssd.per_layer``, ``python -m mdssd.eval --per-layer``): the prior
ranges, the exactness of keeping one layer's priors, and the command end to end."""

import json

import pytest
import torch

from mdssd.data import SyntheticSigns
from mdssd.model import build_model, save_checkpoint
from mdssd.model.priors import make_priors
from mdssd.per_layer import LayerSubset, best_layer_per_bin, layer_prior_ranges

NUM_CLASSES = len(SyntheticSigns.class_names) + 1


@pytest.mark.parametrize("preset", ["mdssd_tiny", "ssd_tiny", "ssd_tiny_s4", "mdssd300"])
def test_ranges_tile_the_priors_layer_by_layer(preset):
    model = build_model(preset, num_classes=3, backend="reference")
    config = model.config
    ranges = layer_prior_ranges(config)
    assert [name for name, _, _ in ranges] == list(config.sources)
    assert ranges[0][1] == 0 and ranges[-1][2] == model.num_priors
    assert all(a[2] == b[1] for a, b in zip(ranges, ranges[1:]))
    # Each block is exactly the priors make_priors builds for that layer alone.
    for k, (_, start, end) in enumerate(ranges):
        alone = config.priors.__class__(*(getattr(config.priors, f)[k:k + 1] for f in
                                          ("feature_maps", "steps", "min_sizes", "max_sizes", "aspect_ratios")),
                                        clip=config.priors.clip)
        assert torch.equal(model.priors[start:end], make_priors(alone, config.image_size))


def test_one_layer_equals_every_other_prior_scored_background():
    torch.manual_seed(0)
    model = build_model("mdssd_tiny", num_classes=4, backend="reference").eval()
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        loc, conf = model(images)
    # Sharpen the logits so that plenty of detections pass the score threshold in every layer.
    conf = conf * 20
    for name, start, end in layer_prior_ranges(model.config):
        subset = LayerSubset(model, start, end)
        sliced = subset.postprocess(loc[:, start:end], conf[:, start:end])
        masked_conf = conf.clone()
        keep = torch.zeros(conf.shape[1], dtype=torch.bool)
        keep[start:end] = True
        masked_conf[:, ~keep, 0] = 1e4  # background certain: every class score 0 after softmax
        masked = model.postprocess(loc, masked_conf)
        counts = sliced[3]
        assert torch.equal(counts, masked[3]) and counts.sum() > 0, name
        for a, b in zip(sliced[:3], masked[:3]):
            assert torch.equal(a, b), name
        # The boxes are decoded from this layer's priors: centres on its grid.
        assert torch.equal(subset.priors, model.priors[start:end])


def test_layer_subset_forward_and_bad_range():
    torch.manual_seed(0)
    model = build_model("ssd_tiny", num_classes=3, backend="reference").eval()
    name, start, end = layer_prior_ranges(model.config)[1]
    with torch.no_grad():
        loc, conf = model(torch.zeros(1, 3, 128, 128))
        sub_loc, sub_conf = LayerSubset(model, start, end)(torch.zeros(1, 3, 128, 128))
    assert torch.equal(sub_loc, loc[:, start:end]) and torch.equal(sub_conf, conf[:, start:end])
    with pytest.raises(ValueError, match="prior range"):
        LayerSubset(model, 0, model.num_priors + 1)


def test_best_layer_per_bin_ignores_missing_and_the_all_row():
    def row(layer, ap_bin):
        return {"layer": layer, "size_bins": {b: {"AP": ap_bin.get(b, float("nan"))}
                                              for b in ("2-8px", "8-16px", "16-32px", "32-64px")}}
    rows = [row("a", {"8-16px": 0.3, "16-32px": 0.1}), row("b", {"8-16px": 0.2, "16-32px": 0.4}),
            row("all", {"8-16px": 0.9, "16-32px": 0.9})]
    assert best_layer_per_bin(rows) == {"8-16px": "a", "16-32px": "b"}


def test_eval_per_layer_command(tmp_path, capsys):
    from mdssd import eval as eval_cli

    torch.manual_seed(0)
    model = build_model("ssd_tiny_s4", num_classes=NUM_CLASSES, backend="ext")
    ckpt = tmp_path / "s4.pt"
    save_checkpoint(model, ckpt)
    prefix = tmp_path / "pl"
    assert eval_cli.main(["--weights", str(ckpt), "--data", "synthetic", "--num-images", "2", "--device", "cpu",
                          "--per-layer", "--per-layer-out", str(prefix)]) == 0
    out = capsys.readouterr().out
    for layer in model.config.sources:
        assert f"| {layer} |" in out
    assert "| all |" in out and "AP 8-16px" in out
    data = json.loads((tmp_path / "pl.json").read_text())
    assert [r["layer"] for r in data["layers"]] == [*model.config.sources, "all"]
    assert [r["priors"] for r in data["layers"][:-1]] == [e - s for _, s, e in layer_prior_ranges(model.config)]
    assert (tmp_path / "pl.png").stat().st_size > 0 and (tmp_path / "pl.md").exists()
    with pytest.raises(SystemExit):
        eval_cli.main(["--weights", str(ckpt), "--per-layer", "--no-coco"])

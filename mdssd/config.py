"""Training configuration: one flat dataclass, filled in this order (later wins):

1. the dataclass defaults (a run on the synthetic set that finishes on a 2-core CPU),
2. the defaults of the chosen preset (:data:`PRESET_DEFAULTS`: batch, steps, ... of the paper
   models),
3. a YAML file (``--config FILE.yaml``: a mapping of field names to values),
4. command-line flags (``--batch-size 8``) and ``--set key=value`` pairs, in the order given.

Values given as text (flags, ``--set``) are parsed as YAML scalars (``1e-3``, ``true``, ``null``,
``[0.5, 0.75]``) and then checked against the field's type, so a typo fails loudly with the
field's name.
"""

from __future__ import annotations

import argparse
import re
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .data.dataset import DATASETS

# The small preset of mdssd.model, used by the default CPU run and the tests.
SMALL_PRESET = "mdssd_tiny"
PAPER_PRESETS = ("mdssd300", "mdssd512", "ssd300", "ssd512")


@dataclass
class TrainConfig:
    # --- model
    # Model preset of mdssd.model (its input side comes with it: 128 for the small one).
    preset: str = SMALL_PRESET
    # BatchNorm after every backbone conv: no ImageNet weights can be downloaded here, so the
    # default trains from scratch, which needs BN to converge in a short schedule.
    batch_norm: bool = True
    # "ext" (compiled kernels) or "reference" (pure PyTorch); same weights, same results.
    backend: str = "ext"
    # Optional local torchvision ``vgg16`` state-dict file for the backbone (never required).
    pretrained_backbone: Optional[str] = None

    # --- data
    # synthetic | voc | coco | tt100k | yolo | visdrone | dota
    dataset: str = "synthetic"
    data_root: Optional[str] = None
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    # The synthetic set: split sizes (images), its own seed (so runs with different training
    # seeds are scored on the same val images) and the range of the generated image sides. The
    # default 128-192 px puts the 6-48 px objects at 4-48 px (median about 12) in the small
    # preset's 128 px input, where its smallest priors are 8 px; null takes the generator's own
    # range (300-1024 px, for the 300/512 presets).
    synthetic_train_images: int = 2000
    synthetic_val_images: int = 200
    data_seed: int = 0
    synthetic_min_size: Optional[int] = 128
    synthetic_max_size: Optional[int] = 192
    # Synthetic: [min, max] side in px of every object and distractor (null: the generator's mix
    # of 85% 6-48 px and 15% 48-128 px), and [min, max] objects per image (null: 1-6).
    synthetic_object_sizes: Optional[list] = None
    synthetic_objects: Optional[list] = None
    workers: int = 1

    # --- small objects in large images: crop training, sliced evaluation
    # Train on input-sized windows cut at native resolution (mdssd.data.crop) instead of
    # resizing whole images to the input.
    crop: bool = False
    # Crop scale jitter: output px per source px, log-uniform in [low, high].
    crop_scale: list = field(default_factory=lambda: [0.8, 1.25])
    # Share of crops placed around a ground-truth box; the others go anywhere (background).
    crop_object_prob: float = 0.8
    # A box cut by the crop window is kept if this share of its area remains, else ignored.
    crop_min_visible: float = 0.6
    # Crop windows per training image and epoch (each its own random window); null: the median
    # image area over the window area, 1 to 64 (mdssd.data.crop.windows_per_image).
    crop_windows: Optional[int] = None
    # Periodic evaluation on tiles of this side in image px (null: whole images resized).
    tile: Optional[int] = None
    # Overlap of neighbouring tiles, as a fraction of the tile side.
    tile_overlap: float = 0.25
    # Add one resized whole-image pass to the tiles (for objects larger than a tile).
    tile_full_image: bool = False
    # How detections of overlapping tiles merge: nms (IoU) | ios (NMS, then SAHI-style IoS merge).
    tile_merge: str = "nms"

    # --- schedule (SPEC.md): SGD, momentum 0.9, wd 5e-4, warm-up, x0.1 at 2/3 and 5/6.
    # The defaults here are the 15-minute CPU run of the small preset trained from scratch: lr
    # 4e-3 with clipping at norm 10 (SPEC's 1e-3 reached 0.04% mAP after 150 steps where this
    # reached 0.5%; 1e-2 unclipped diverged during warm-up). The paper presets use SPEC's 1e-3
    # without clipping (PRESET_DEFAULTS).
    # Total optimizer steps; setting ``epochs`` instead derives them from the epoch count. 1000
    # steps: 12.4 min and 33.0% val mAP on a quiet 2-core CPU, where 600 steps reached 8.8%.
    steps: Optional[int] = 1000
    epochs: Optional[int] = None
    # Global batch (split evenly over the processes of a torchrun job).
    batch_size: int = 8
    lr: float = 4e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 50
    warmup_factor: float = 1.0 / 3.0
    lr_decay_at: list = field(default_factory=lambda: [2.0 / 3.0, 5.0 / 6.0])
    lr_gamma: float = 0.1
    # Max global L2 norm of the gradients; null disables clipping.
    grad_clip: Optional[float] = 10.0
    # Learning-rate multipliers of two parameter groups (issue 11's hypotheses; 1 = one rate for
    # all): the Fusion Blocks' deconvolutions, and every L2Norm scale (Fusion Blocks' and SSD's).
    deconv_lr_mult: float = 1.0
    l2norm_scale_lr_mult: float = 1.0

    # --- device and precision
    # auto | cpu | cuda
    device: str = "auto"
    # auto (bf16 on a GPU that has it, else fp16 with GradScaler; off on CPU) | off | bf16 | fp16
    amp: str = "auto"
    # null: channels_last on CUDA, contiguous on CPU.
    channels_last: Optional[bool] = None
    # torch.set_num_threads on CPU; null: the cores (shared by the local ranks) less one per data
    # worker, or OMP_NUM_THREADS when set.
    threads: Optional[int] = None
    # torch.compile the detector's forward (and with it its backward); our ops stay single graph
    # nodes. Off by default: on a 2-core CPU compiling takes longer than it saves in a short run
    # (benchmarks/results/*end-to-end*.md).
    compile: bool = False
    # torch.compile mode: default | max-autotune-no-cudagraphs | reduce-overhead | max-autotune
    compile_mode: str = "default"

    # --- evaluation, logging, checkpoints
    # Where checkpoints and logs go; null: runs/<preset>.
    out_dir: Optional[str] = None
    # Evaluate every N steps (0: only at the end). The end of training always evaluates.
    eval_interval: int = 250
    # Save ``last.pt`` every N steps (0: only at evaluations and at the end).
    checkpoint_interval: int = 100
    log_interval: int = 10
    # VOC mAP IoU threshold for the periodic evaluation.
    eval_iou: float = 0.5
    progress: bool = True
    tensorboard: bool = True

    # --- reproducibility and resuming
    seed: int = 0
    # Path of a checkpoint to resume from, or "auto" for ``out_dir/last.pt`` when it exists.
    resume: Optional[str] = None
    # Stop (as an interruption would, after saving ``last.pt``) once this global step is done.
    stop_at_step: Optional[int] = None
    # torch.use_deterministic_algorithms(True) (slower on GPU).
    deterministic: bool = False


# Training defaults of the paper models (SPEC.md: batch 32; SSD's VOC schedule of 120k steps);
# applied before the YAML file and the command line.
PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mdssd300": dict(batch_size=32, steps=120_000, lr=1e-3, grad_clip=None, warmup_steps=1000, eval_interval=10_000,
                     checkpoint_interval=2000, synthetic_train_images=16_000,
                     synthetic_val_images=1000, workers=6,
                     synthetic_min_size=None, synthetic_max_size=None),
    "ssd300": dict(batch_size=32, steps=120_000, lr=1e-3, grad_clip=None, warmup_steps=1000, eval_interval=10_000,
                   checkpoint_interval=2000, synthetic_train_images=16_000,
                   synthetic_val_images=1000, workers=6,
                     synthetic_min_size=None, synthetic_max_size=None),
    "mdssd512": dict(batch_size=32, steps=120_000, lr=1e-3, grad_clip=None, warmup_steps=1000, eval_interval=10_000,
                     checkpoint_interval=2000, synthetic_train_images=16_000,
                     synthetic_val_images=1000, workers=8,
                     synthetic_min_size=None, synthetic_max_size=None),
    "ssd512": dict(batch_size=32, steps=120_000, lr=1e-3, grad_clip=None, warmup_steps=1000, eval_interval=10_000,
                   checkpoint_interval=2000, synthetic_train_images=16_000,
                   synthetic_val_images=1000, workers=8,
                     synthetic_min_size=None, synthetic_max_size=None),
}
# The ResNet-101 models (MDSSD320*, MDSSD512*) and their SSD baselines train like the VGG ones of
# the same input size.
for _resnet, _vgg in (("mdssd320_resnet101", "mdssd300"), ("ssd320_resnet101", "ssd300"),
                      ("mdssd512_resnet101", "mdssd512"), ("ssd512_resnet101", "ssd512")):
    PRESET_DEFAULTS[_resnet] = dict(PRESET_DEFAULTS[_vgg])

# The stride-4 ablation twins (mdssd.model.config) train as the model they are compared with.
PRESET_DEFAULTS["ssd300_s4"] = PRESET_DEFAULTS["ssd300"]
PRESET_DEFAULTS["ssd512_s4"] = PRESET_DEFAULTS["ssd512"]

_CHOICES = {
    "backend": ("ext", "reference"),
    "dataset": DATASETS,
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "off", "bf16", "fp16"),
    "tile_merge": ("nms", "ios"),
    "compile_mode": ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"),
}


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field."""


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check/convert ``value`` to the field's annotated type (YAML gives ints for floats, etc.)."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field '{name}' may not be null")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config field '{name}' expects true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config field '{name}' expects an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{name}' expects a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            # ``--set out_dir=123`` parses as an int; a path or name is still meant.
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise ConfigError(f"config field '{name}' expects a string, got {value!r}")
        return value
    if annotation is list or typing.get_origin(annotation) is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config field '{name}' expects a list, got {value!r}")
        return [float(v) for v in value]
    raise ConfigError(f"config field '{name}' has an unsupported type {annotation}")


def apply(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return ``config`` with ``values`` applied; unknown keys raise naming ``source``."""
    types_ = _field_types()
    updates = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in types_:
            close = [n for n in types_ if n.startswith(name[:4])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key '{key}' in {source}{hint}")
        updates[name] = _coerce(name, value, types_[name])
    return dataclasses.replace(config, **updates)


def validate(config: TrainConfig) -> TrainConfig:
    for name, choices in _CHOICES.items():
        if getattr(config, name) not in choices:
            raise ConfigError(f"config field '{name}' must be one of {choices}, got {getattr(config, name)!r}")
    if config.steps is None and config.epochs is None:
        raise ConfigError("set 'steps' or 'epochs'")
    for name in ("steps", "epochs", "batch_size", "synthetic_train_images",
                 "synthetic_val_images"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ConfigError(f"config field '{name}' must be >= 1, got {value}")
    for name in ("workers", "warmup_steps", "eval_interval", "checkpoint_interval"):
        if getattr(config, name) < 0:
            raise ConfigError(f"config field '{name}' must be >= 0, got {getattr(config, name)}")
    if config.log_interval < 1:
        raise ConfigError(f"config field 'log_interval' must be >= 1, got {config.log_interval}")
    if config.lr <= 0:
        raise ConfigError(f"config field 'lr' must be > 0, got {config.lr}")
    for name in ("deconv_lr_mult", "l2norm_scale_lr_mult"):
        if not getattr(config, name) > 0:
            raise ConfigError(f"config field '{name}' must be > 0, got {getattr(config, name)}")
    if config.grad_clip is not None and config.grad_clip <= 0:
        raise ConfigError(f"config field 'grad_clip' must be > 0 or null, got {config.grad_clip}")
    if config.dataset != "synthetic" and not config.data_root:
        raise ConfigError(f"dataset '{config.dataset}' needs 'data_root'")
    _validate_crop_tile(config)
    return config


def _validate_crop_tile(config: TrainConfig) -> None:
    for name in ("crop_scale", "synthetic_object_sizes", "synthetic_objects"):
        value = getattr(config, name)
        if value is not None and (len(value) != 2 or not 0 < value[0] <= value[1]):
            raise ConfigError(f"config field '{name}' must be [low, high] with 0 < low <= high, got {value}")
    if not 0 <= config.crop_object_prob <= 1:
        raise ConfigError(f"config field 'crop_object_prob' must be in [0, 1], got {config.crop_object_prob}")
    if not 0 < config.crop_min_visible <= 1:
        raise ConfigError(f"config field 'crop_min_visible' must be in (0, 1], got {config.crop_min_visible}")
    if config.crop_windows is not None and config.crop_windows < 1:
        raise ConfigError(f"config field 'crop_windows' must be >= 1 or null, got {config.crop_windows}")
    if config.crop_windows is not None and not config.crop:
        raise ConfigError("config field 'crop_windows' is set but 'crop' is off: windows need --crop")
    if config.tile is not None and config.tile < 8:
        raise ConfigError(f"config field 'tile' must be >= 8 pixels or null, got {config.tile}")
    if not 0 <= config.tile_overlap < 1:
        raise ConfigError(f"config field 'tile_overlap' must be in [0, 1), got {config.tile_overlap}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")


def parse_scalar(text: str) -> Any:
    """A command-line value as YAML reads it (``0.5`` is a float, ``null`` None, ``[1, 2]`` a list)."""
    if not text.strip():
        return ""
    # YAML 1.1 reads "1e-3" (no dot) as a string; a float is what anyone typing it means.
    if _FLOAT.match(text.strip()):
        return float(text)
    return yaml.safe_load(text)


# One line of ``--help`` per field, with its unit: the short form of the comments on the fields
# above. A field without an entry here (a new one) gets the first sentence of its comment.
FIELD_HELP: dict[str, str] = {
    "preset": "model preset of mdssd.model (mdssd_tiny, mdssd300, ssd300, ssd_tiny_s4, ...); brings its input side",
    "batch_norm": "BatchNorm after every backbone conv (needed to train from scratch)",
    "backend": "ops backend: ext (compiled kernels) or reference (pure PyTorch); same results",
    "pretrained_backbone": "path of a local torchvision state-dict file for the backbone: vgg16/vgg16_bn (VGG presets) or resnet101 (*_resnet101 presets)",
    "dataset": "data set: synthetic, voc, coco, tt100k, yolo, visdrone or dota",
    "data_root": "data set folder (yolo: data.yaml or its folder; not needed for synthetic)",
    "train_split": "training split name (null: the data set's usual one)",
    "val_split": "evaluation split name (null: the data set's usual one)",
    "synthetic_train_images": "synthetic set: training images",
    "synthetic_val_images": "synthetic set: validation images",
    "data_seed": "synthetic set: generator seed, independent of --seed",
    "synthetic_min_size": "synthetic set: smallest generated image side, pixels (null: the generator's 300)",
    "synthetic_max_size": "synthetic set: largest generated image side, pixels (null: the generator's 1024)",
    "synthetic_object_sizes": "synthetic set: [min, max] object side, pixels (null: 85% 6-48 px, 15% 48-128 px)",
    "synthetic_objects": "synthetic set: [min, max] objects per image (null: 1-6)",
    "workers": "data loader worker processes",
    "steps": "total optimizer steps (null: derived from --epochs)",
    "epochs": "passes over the training set; replaces --steps",
    "batch_size": "global batch, images (split evenly over torchrun processes)",
    "lr": "SGD learning rate after warm-up, before decay",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay (L2 penalty factor)",
    "warmup_steps": "linear learning-rate warm-up, steps",
    "warmup_factor": "learning rate at step 0, as a fraction of --lr",
    "lr_decay_at": "when the learning rate is multiplied by --lr-gamma, as fractions of the total steps",
    "lr_gamma": "learning-rate factor at each --lr-decay-at point",
    "grad_clip": "max global L2 norm of the gradients (null: no clipping)",
    "deconv_lr_mult": "learning-rate multiplier of the Fusion Blocks' deconvolutions (weights and biases)",
    "l2norm_scale_lr_mult": "learning-rate multiplier of every L2Norm scale (Fusion Blocks' and SSD's)",
    "device": "auto, cpu or cuda",
    "amp": "mixed precision: auto (bf16 or fp16 on a GPU, off on CPU), off, bf16 or fp16",
    "channels_last": "NHWC memory format (null: on CUDA, off on CPU)",
    "threads": "CPU intra-op threads (null: the cores less one per data worker, or OMP_NUM_THREADS)",
    "compile": "torch.compile the detector's forward and backward (compiles for a minute or more first)",
    "compile_mode": "torch.compile mode: default, max-autotune-no-cudagraphs, reduce-overhead or max-autotune",
    "out_dir": "folder for checkpoints and logs (null: runs/<preset>)",
    "eval_interval": "evaluate every N steps (0: only at the end, which always evaluates)",
    "checkpoint_interval": "write last.pt every N steps (0: only at evaluations and at the end)",
    "log_interval": "log the training loss every N steps",
    "eval_iou": "IoU threshold of the periodic VOC mAP",
    "progress": "show a progress bar",
    "tensorboard": "write TensorBoard logs (when tensorboard is installed)",
    "seed": "training seed: initial weights, data order, augmentation",
    "resume": "checkpoint to resume from, or auto: <out-dir>/last.pt when it exists",
    "stop_at_step": "stop after this global step, saving last.pt as an interruption would",
    "deterministic": "torch.use_deterministic_algorithms(True) (slower on GPU)",
}


def _field_comments() -> dict[str, str]:
    """The comment block right above each TrainConfig field, joined into one paragraph."""
    import inspect
    import io
    import tokenize

    comments: dict[str, str] = {}
    block: list[str] = []
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(TrainConfig)).readline)
    line_start = True
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not text.startswith("---"):  # section rulers like "# --- model"
                block.append(text)
        elif tok.type == tokenize.NAME and line_start and tok.line.strip().startswith(tok.string + ":"):
            comments[tok.string] = " ".join(block)
            block = []
        if tok.type in (tokenize.NEWLINE, tokenize.NL):
            line_start = True
            if tok.type == tokenize.NEWLINE:
                block = [] if not tok.line.strip().startswith("#") else block
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            line_start = False
    return comments


def field_help(name: str) -> str:
    """One line of ``--help`` for field ``name`` (see :data:`FIELD_HELP`)."""
    if name in FIELD_HELP:
        return FIELD_HELP[name]
    comment = _field_comments().get(name, "")
    first = re.split(r"(?<=[.;:])\s", comment, maxsplit=1)[0].rstrip(".;:")
    return first or name.replace("_", " ")


def _metavar(name: str, annotation: Any) -> str:
    if name in _CHOICES:
        return "{" + ",".join(_CHOICES[name]) + "}"
    base = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = base[0]
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    if kind is list or typing.get_origin(kind) is list:
        return "[X,...]"
    return "PATH" if name.endswith(("_dir", "_root", "_backbone")) or name == "resume" else "TEXT"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mdssd.train",
        description="Train MDSSD/SSD. Without arguments: the small preset on the synthetic "
        "small-object set, sized to finish on a 2-core CPU, reporting val mAP.",
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML mapping of config keys")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override any config key (repeatable), e.g. --set lr=2e-3 --set amp=bf16",
    )
    types_ = _field_types()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        # argparse formats help with %: a literal percent sign must be doubled.
        help_text = f"{field_help(f.name)} (default: {_default_repr(f)})".replace("%", "%%")
        if types_[f.name] in (bool, Optional[bool]):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=_metavar(f.name, types_[f.name]),
                                help=help_text)
    return parser


def _default_repr(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def from_args(argv: list[str] | None = None) -> TrainConfig:
    """Build the config from command-line arguments (see the module docstring for precedence)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    flags: dict[str, Any] = {}
    for name in field_names():
        value = getattr(args, name)
        if value is None:
            continue
        flags[name] = value if isinstance(value, bool) else parse_scalar(value)
    sets: dict[str, Any] = {}
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        sets[key.strip()] = parse_scalar(text)
    file_values = load_yaml(args.config) if args.config else {}
    return resolve(file_values=file_values, overrides={**flags, **sets},
                   file_name=args.config or "")


def resolve(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
            file_name: str = "config file") -> TrainConfig:
    """Defaults < preset defaults < ``file_values`` < ``overrides``, validated."""
    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    # The preset decides which defaults apply, so find it first (command line beats file).
    preset = overrides.get("preset", file_values.get("preset", TrainConfig.preset))
    config = apply(TrainConfig(), {"preset": preset}, "preset")
    config = apply(config, PRESET_DEFAULTS.get(config.preset, {}), f"defaults of {config.preset}")
    config = apply(config, file_values, file_name)
    config = apply(config, overrides, "command line")
    explicit = set(file_values) | set(overrides)
    if "epochs" in explicit and config.epochs is not None:
        if "steps" in explicit and config.steps is not None:
            raise ConfigError("set 'steps' or 'epochs', not both")
        # An explicit epoch count replaces the default step count.
        config = dataclasses.replace(config, steps=None)
    if config.out_dir is None:
        config = dataclasses.replace(config, out_dir=f"runs/{config.preset}")
    return validate(config)


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

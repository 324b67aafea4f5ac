"""``python -m mdssd.train``: train MDSSD/SSD on the synthetic set, VOC, COCO, TT100K, YOLO, VisDrone or DOTA.

Without arguments it trains the small preset on the synthetic small-object set, sized to finish on
a 2-core CPU, and reports val mAP. ``--preset mdssd300|mdssd512|ssd300|ssd512`` selects a paper
model (with the paper's batch/schedule defaults), ``--config FILE.yaml`` and ``--set key=value``
or ``--key value`` override any field of :class:`mdssd.config.TrainConfig`. Under ``torchrun``
it trains with DDP (NCCL on GPUs, gloo on CPU); rank 0 logs and writes checkpoints.

Exact resumption: the data order of epoch ``e`` is a permutation seeded by ``seed + e`` (the
distributed sampler's), each item's augmentation draws from a generator seeded by
``(seed, epoch, index)`` (global RNGs, if a transform used them, by ``(seed, split, epoch,
index)``), so the batch at any (epoch, batch) position is a pure function
of the config and can be skipped to; the checkpoint holds model, optimizer, scheduler, AMP
scaler, that position and the global RNG states of every rank.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import checkpoint as ckpt
from . import config as config_mod
from . import distributed
from .config import TrainConfig
from .runlog import NullLog, RunLog
from .schedule import build_scheduler

CHECKPOINT_FORMAT = 1
# Fields that define the model and its data; a checkpoint resumed under different values
# would not continue the same run.
_MUST_MATCH = ("preset", "batch_norm", "dataset", "data_root", "train_split", "data_seed",
               "synthetic_train_images", "synthetic_min_size", "synthetic_max_size", "seed",
               "batch_size", "lr",  # lr: the scheduler's restored base lr would silently win
               "synthetic_object_sizes", "synthetic_objects", "crop", "crop_scale", "crop_object_prob",
               "crop_min_visible", "crop_windows")
# Schedule fields a resumed run may change on purpose (e.g. to train longer): the schedule reads
# them from the config, so they apply from the resumed step on; the run says so.
_MAY_CHANGE = ("steps", "epochs", "lr_decay_at", "lr_gamma", "warmup_steps")


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; ``step`` is the first bad optimizer step (1-based)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# ---------------------------------------------------------------------------------------------
# Data order and per-item randomness


class EpochSampler(DistributedSampler):
    """The distributed sampler (per-epoch permutation seeded by ``seed + epoch``, padded to a
    multiple of the world size, rank ``r`` takes every ``world``-th index), yielding
    ``(epoch, index)`` pairs so that workers seed each item without shared state, and able to
    start ``start`` samples into the epoch (the resume position)."""

    def __init__(self, length: int, num_replicas: int, rank: int, shuffle: bool, seed: int):
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


@contextlib.contextmanager
def _isolated_rng():
    """Run a block without disturbing the caller's python/numpy/torch global RNG streams."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


class SeededItems(Dataset):
    """Item ``(epoch, index)`` of a :class:`mdssd.data.DetectionDataset`.

    The data set seeds its augmentation generator from ``(seed, epoch, index)``; the epoch travels
    with the index (set on the worker's copy just before the item is made), so persistent workers
    see each new epoch. Code that draws from the global python/numpy/torch generators instead
    gets them seeded from the same triple, inside a block that leaves the caller's streams
    untouched (with ``workers=0`` the caller is the training process)."""

    def __init__(self, dataset, seed: int, stream: int):
        self.dataset = dataset
        self.seed = seed
        self.stream = stream

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        words = np.random.SeedSequence([self.seed, self.stream, epoch, index]).generate_state(3)
        self.dataset.set_epoch(epoch)
        with _isolated_rng():
            random.seed(int(words[0]))
            np.random.seed(int(words[1]))
            torch.manual_seed(int(words[2]))
            return self.dataset[index]


# ---------------------------------------------------------------------------------------------
# Data sets (adapters to mdssd.data)


@dataclass
class DataBundle:
    train: Any  # mdssd.data.DetectionDataset, SSD augmentation
    val: Any  # resize only; val.source holds the annotations the metrics read
    class_names: tuple

    def __post_init__(self) -> None:
        self._val_annotations: dict[int, Any] = {}

    def val_annotation(self, index: int):
        """Ground truth of val image ``index`` (pixels), read once and kept for later evaluations."""
        if index not in self._val_annotations:
            self._val_annotations[index] = self.val.source.annotation(index)
        return self._val_annotations[index]


def build_data(cfg: TrainConfig, image_size: int) -> DataBundle:
    """Train (SSD augmentation) and val (resize) sets, each from its own source options (the
    synthetic set's size and image sizes differ per split; see also
    :func:`mdssd.inference.synthetic_val_options`, which ``mdssd.eval`` uses to rebuild the val set)."""
    from .data import DetectionDataset, Resize, SSDAugment, build_source
    from .data.crop import NativeCrop, windows_per_image
    from .inference import synthetic_shape_options

    def source(split: str, default: str):
        options: dict[str, Any] = {}
        if cfg.dataset == "synthetic":
            count = cfg.synthetic_train_images if default == "train" else cfg.synthetic_val_images
            options = {"num_images": count, "seed": cfg.data_seed}
            options.update({k: v for k, v in (("min_size", cfg.synthetic_min_size),
                                              ("max_size", cfg.synthetic_max_size)) if v is not None})
            options.update(synthetic_shape_options(config_mod.to_dict(cfg)))
        return build_source(cfg.dataset, cfg.data_root, split or default, **options)

    augment = (NativeCrop(size=image_size, scale_range=tuple(cfg.crop_scale), object_prob=cfg.crop_object_prob,
                          min_visible=cfg.crop_min_visible) if cfg.crop else SSDAugment(size=image_size))
    train_source = source(cfg.train_split, "train")
    repeats = (cfg.crop_windows or windows_per_image(train_source, image_size)) if cfg.crop else 1
    train = DetectionDataset(train_source, augment, seed=cfg.seed, repeats=repeats)
    val = DetectionDataset(source(cfg.val_split, "val"), Resize(size=image_size), seed=cfg.seed)
    if train.class_names != val.class_names:
        raise RuntimeError(f"train and val splits of {cfg.dataset} disagree on the classes: "
                           f"{train.class_names} vs {val.class_names}")
    return DataBundle(train=train, val=val, class_names=train.class_names)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, precision


def resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_threads(cfg: TrainConfig, device: torch.device, info: distributed.DistInfo) -> int | None:
    """Intra-op threads for CPU training: ``threads`` when set; else, unless OMP_NUM_THREADS
    decides, the process's cores shared among the local ranks, less one per data worker.

    OpenMP threads spin at their barriers, so on an oversubscribed machine (our shared 2-core
    one: 2 threads plus a worker) each step took 3-4x the wall time of 1 thread and 3x its CPU
    time; leaving the workers their own cores avoids that."""
    if cfg.threads is not None:
        return cfg.threads
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    return max(1, cores // max(1, local_ranks) - cfg.workers)


def resolve_amp(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None: full fp32)."""
    amp = cfg.amp
    if amp == "auto":
        if device.type != "cuda":
            return None
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise config_mod.ConfigError("amp=fp16 needs a CUDA device (use bf16 or off on CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_model(preset: str, num_classes: int, backend: str, batch_norm: bool):
    from .model import build_model as _build

    return _build(preset, num_classes=num_classes, backend=backend, batch_norm=batch_norm)


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(core, loader: DataLoader, sampler: "EpochSampler", bundle: DataBundle,
             device: torch.device, amp_dtype: torch.dtype | None, memory_format: torch.memory_format,
             iou: float, info: distributed.DistInfo, tile=None) -> dict[str, Any]:
    """VOC07 mAP of the unwrapped model ``core`` on the val split (whole images resized, or with
    ``tile`` (a :class:`mdssd.tiling.TileSpec`) sliced into tiles).

    Each rank predicts its share (the sampler pads the split to a multiple of the world size by
    repeating images); the detections are gathered on rank 0, de-duplicated by data set index,
    scored once with :func:`mdssd.metrics.voc_eval`, and the metrics are broadcast so every rank
    returns the same dict: ``mAP`` (VOC07 11-point), ``mAP_area``, ``images``, ``detections``,
    ``table`` (per-class text)."""
    from .metrics import Detections, format_table, voc_eval

    was_training = core.training
    core.eval()
    sampler.set_position(0, 0)
    order = [index for _, index in iter(sampler)]  # this rank's items, in loader order
    local: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    if tile is not None:
        from .tiling import predict_source_tiled

        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            tiled = predict_source_tiled(core, bundle.val.source, tile, order, device=device)
        for index, det in zip(order, tiled):
            ann = bundle.val_annotation(index)
            scale = np.array([ann.width, ann.height, ann.width, ann.height], dtype=np.float64)
            local.append((index, det.boxes / scale, det.scores, det.labels))
    for batch in (loader if tile is None else ()):
        images = batch["images"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loc, conf = core(images)
        boxes, scores, labels, counts = (t.cpu() for t in core.postprocess(loc.float(), conf.float()))
        for b in range(counts.shape[0]):
            n = int(counts[b])
            local.append((order[len(local)], boxes[b, :n].double().numpy(),
                          scores[b, :n].double().numpy(), labels[b, :n].numpy()))
    if was_training:
        core.train()

    metrics = None
    gathered = distributed.all_gather_object(local)
    if info.is_main:
        by_index: dict[int, tuple] = {}
        for part in gathered:
            for index, *detection in part:
                by_index.setdefault(index, detection)
        indices = sorted(by_index)
        annotations = [bundle.val_annotation(i) for i in indices]
        detections = []
        for index, ann in zip(indices, annotations):
            boxes01, scores, labels = by_index[index]
            # Normalised boxes of the resized image are the same fractions of the stored image.
            scale = np.array([ann.width, ann.height, ann.width, ann.height], dtype=np.float64)
            detections.append(Detections(boxes01 * scale, scores, labels))
        result = voc_eval(annotations, detections, bundle.class_names, iou_threshold=iou)
        metrics = {
            "mAP": result.map_11,
            "mAP_area": result.map_area,
            "images": len(indices),
            "detections": int(sum(len(d.scores) for d in detections)),
            "table": format_table(bundle.class_names, voc=result),
        }
    return distributed.broadcast_object(metrics)


def tile_spec(cfg: TrainConfig):
    """The sliced evaluation of ``--tile`` (None: whole images resized)."""
    if cfg.tile is None:
        return None
    from .tiling import TileSpec

    return TileSpec(size=cfg.tile, overlap=cfg.tile_overlap, full_image=cfg.tile_full_image, merge=cfg.tile_merge)


# ---------------------------------------------------------------------------------------------
# Training


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _checkpoint_state(cfg, model, optimizer, scheduler, scaler, step, epoch, batch, best, rngs,
                      class_names, world_size) -> dict:
    core = _unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config_mod.to_dict(cfg),
        "model_config": core.config.to_dict() if hasattr(core.config, "to_dict") else None,
        "class_names": tuple(class_names),
        "model": core.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch,
        "best": best,
        "rng": rngs,
        "world_size": world_size,
    }


def _resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        path = Path(cfg.out_dir) / "last.pt"
        return path if path.exists() else None
    path = Path(cfg.resume)
    if not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    return path


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training as configured; returns a summary (steps, final/best metrics, wall time, out
    dir). Joins the torchrun process group when launched by torchrun."""
    device_kind = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    info = distributed.init(device_kind)
    finished = False
    try:
        summary = _train(cfg, info)
        finished = True
        return summary
    finally:
        if info.enabled:
            # On success every rank waits for the others before tearing the group down, so no
            # rank closes its connections while a peer is still writing the last checkpoint
            # (after a failure there is no barrier: the peers may never arrive).
            distributed.shutdown(wait_for_peers=finished)


def _train(cfg: TrainConfig, info: distributed.DistInfo) -> dict[str, Any]:
    """The whole run: set up, train until the last (or ``stop_at_step``) step, summarise."""
    t_start = time.time()
    try:
        run = setup_run(cfg, info)
    except Exception as error:
        error.during_setup = True  # main() prints it as one line naming the problem
        raise
    stopped_early = False
    try:
        run.model.train()
        while run.step < run.total_steps:
            train_one_epoch(run)
            if cfg.stop_at_step is not None and run.step >= cfg.stop_at_step and run.step < run.total_steps:
                stopped_early = True
                break
    finally:
        run.log.close()
    return _summary(run, stopped_early, time.time() - t_start)


@dataclass
class Run:
    """What a training run holds: its parts (fixed after :func:`setup_run`) and its position
    (``step``, ``epoch``, ``batch_in_epoch``, best and last metrics), which the loop advances."""

    cfg: TrainConfig
    info: distributed.DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    bundle: DataBundle
    num_classes: int
    model: Any  # DDP-wrapped when distributed
    core: Any  # the Detector itself
    optimizer: Any
    scheduler: Any
    scaler: Any
    sampler: EpochSampler
    train_loader: DataLoader
    val_sampler: EpochSampler
    val_loader: DataLoader
    per_rank_batch: int
    steps_per_epoch: int
    total_steps: int
    out_dir: Path
    resume_from: Path | None = None
    log: Any = None
    losses: Any = None  # LossBuffer
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: dict = field(default_factory=lambda: {"mAP": None, "step": None})
    last_saved_step: int | None = None
    last_metrics: dict | None = None


def _runtime(cfg: TrainConfig, info: distributed.DistInfo) -> tuple[torch.device, torch.dtype | None, Any]:
    """Device, autocast dtype and memory format; sets threads and determinism."""
    device = resolve_device(cfg, info.local_rank)
    threads = cpu_threads(cfg, device, info)
    if threads is not None:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    amp_dtype = resolve_amp(cfg, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if device.type == "cuda" and not cfg.deterministic:
        # Fixed input size: let cuDNN pick the fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True
    return device, amp_dtype, memory_format


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """SGD parameter groups: the Fusion Blocks' deconvolutions and the L2Norm scales get their own
    learning rate (``lr * deconv_lr_mult``, ``lr * l2norm_scale_lr_mult``) when the multiplier is
    not 1; the schedule scales every group alike (``LambdaLR`` multiplies each group's base)."""
    from .model.fusion import FusionBlock, L2Norm

    deconv, scales = [], []
    for module in model.modules():
        if isinstance(module, FusionBlock):
            scales += [module.scale_low, module.scale_high]
            deconv += [p for m in module.upper if isinstance(m, torch.nn.ConvTranspose2d) for p in m.parameters()]
        elif isinstance(module, L2Norm):
            scales.append(module.weight)
    special = [(deconv, cfg.deconv_lr_mult), (scales, cfg.l2norm_scale_lr_mult)]
    taken = {id(p) for params, mult in special if mult != 1.0 for p in params}
    groups = [{"params": [p for p in model.parameters() if id(p) not in taken]}]
    groups += [{"params": params, "lr": cfg.lr * mult} for params, mult in special if mult != 1.0 and params]
    return groups


def compile_model(model: torch.nn.Module, mode: str = "default", backend: str = "inductor") -> None:
    """``torch.compile`` the model's forward in place (``nn.Module.compile``: parameters, state
    dict keys and checkpoints stay those of the eager model); autograd compiles its backward.
    Our ops stay single nodes of the graph (fake kernels and autograd in mdssd.ops); the loss
    (matching, hard negative mining, value checks) stays eager. ``backend="aot_eager"`` traces
    the same graphs without generating code (the tests use it: inductor's C++ compile of the
    detector takes minutes on a 2-core CPU)."""
    model.compile(mode=None if mode == "default" else mode, backend=backend)


def setup_run(cfg: TrainConfig, info: distributed.DistInfo) -> Run:
    """Data, model, optimizer, schedule and loaders, restored from a checkpoint when resuming."""
    device, amp_dtype, memory_format = _runtime(cfg, info)
    if cfg.batch_size % info.world_size:
        raise config_mod.ConfigError(
            f"batch_size {cfg.batch_size} is global and must divide evenly over {info.world_size} processes")
    per_rank_batch = cfg.batch_size // info.world_size

    # Same seed on every rank: identical initial weights (DDP broadcasts rank 0's anyway).
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    from .model.config import get_config

    bundle = build_data(cfg, get_config(cfg.preset).image_size)
    num_classes = len(bundle.class_names) + 1
    model = build_model(cfg.preset, num_classes, cfg.backend, cfg.batch_norm)
    if cfg.pretrained_backbone:
        _load_backbone(model, cfg.pretrained_backbone)
    model.to(device=device, memory_format=memory_format)
    if cfg.compile:
        compile_model(model, cfg.compile_mode)

    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    images = len(bundle.train.source)
    if images == 0:
        raise config_mod.ConfigError(f"the training set of {cfg.dataset} ({cfg.data_root}) has no images")
    if len(bundle.train) < cfg.batch_size:
        # A set smaller than one batch is cycled: more items (windows, augmentations) per image.
        bundle.train.repeats = math.ceil(cfg.batch_size / images)
    train_items = SeededItems(bundle.train, cfg.seed, stream=0)
    val_items = SeededItems(bundle.val, cfg.seed, stream=1)
    sampler = EpochSampler(len(train_items), info.world_size, info.rank, shuffle=True, seed=cfg.seed)
    steps_per_epoch = sampler.num_samples // per_rank_batch
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, total_steps, cfg.warmup_steps, cfg.warmup_factor,
                                cfg.lr_decay_at, cfg.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    from .data import collate

    loader_kwargs: dict[str, Any] = dict(
        num_workers=cfg.workers, collate_fn=collate, pin_memory=device.type == "cuda",
        persistent_workers=cfg.workers > 0,
        # Its own generator: creating an iterator must not consume the global torch RNG stream
        # (that would make resumed and uninterrupted runs differ).
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    if cfg.workers > 0:
        loader_kwargs["prefetch_factor"] = 4
    train_loader = DataLoader(train_items, batch_size=per_rank_batch, sampler=sampler,
                              drop_last=True, **loader_kwargs)
    val_sampler = EpochSampler(len(val_items), info.world_size, info.rank, shuffle=False, seed=cfg.seed)
    val_loader = DataLoader(val_items, batch_size=max(1, per_rank_batch), sampler=val_sampler,
                            drop_last=False, **loader_kwargs)

    run = Run(cfg, info, device, amp_dtype, memory_format, bundle, num_classes, model, model, optimizer,
              scheduler, scaler, sampler, train_loader, val_sampler, val_loader, per_rank_batch,
              steps_per_epoch, total_steps, Path(cfg.out_dir), resume_from=_resume_path(cfg))
    if run.resume_from is not None:
        _restore(run, run.resume_from)
        run.last_saved_step = run.step
    if info.enabled:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        run.model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    run.core = _unwrap(run.model)
    run.log = _open_log(run)
    run.losses = LossBuffer(run)
    return run


def _restore(run: Run, path: Path) -> None:
    """Model, optimizer, schedule, scaler, position and this rank's RNG states from ``path``."""
    state = ckpt.load(path)
    _check_resumable(state, run.cfg, path)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] is not None and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["scaler"])
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    if state["world_size"] != run.info.world_size and run.info.is_main:
        # Each rank's share of an epoch depends on the world size: the run goes on from the
        # same step and epoch, but the rest of this epoch is not the uninterrupted run's.
        print(f"note: {path} was written by {state['world_size']} processes, this run "
              f"has {run.info.world_size}: resuming at step {run.step}, not bit-exactly", flush=True)
    run.best = state["best"]
    rngs = state["rng"]
    ckpt.set_rng_state(rngs[run.info.rank % len(rngs)])


def _open_log(run: Run):
    if not run.info.is_main:
        return NullLog()
    cfg = run.cfg
    run.out_dir.mkdir(parents=True, exist_ok=True)
    config_mod.dump_yaml(cfg, run.out_dir / "config.yaml")
    log = RunLog(run.out_dir, run.total_steps, run.step, cfg.progress, cfg.tensorboard)
    repeats = run.bundle.train.repeats
    items = f" x {repeats} {'windows' if cfg.crop else 'passes'}" if repeats > 1 else ""
    log.message(
        f"mdssd.train: {cfg.preset} ({run.core.config.image_size}px, {run.num_classes - 1} classes) on "
        f"{cfg.dataset} ({len(run.bundle.train.source)} train{items} / {len(run.bundle.val)} val images), "
        f"{run.total_steps} steps of batch {cfg.batch_size} ({run.steps_per_epoch} per epoch) on "
        f"{run.info.world_size} x {run.device.type}, amp {run.amp_dtype or 'off'}, out {run.out_dir}"
        + (f"; resumed from {run.resume_from} at step {run.step}" if run.resume_from else ""))
    return log


def train_one_epoch(run: Run) -> None:
    """Optimizer steps from the current position to the end of its epoch (or to the last step,
    or to ``stop_at_step``), logging, evaluating and saving on their intervals."""
    cfg = run.cfg
    run.sampler.set_position(run.epoch, run.batch_in_epoch * run.per_rank_batch)
    for batch in run.train_loader:
        run.losses.add(train_step(run, batch))
        run.step += 1
        run.batch_in_epoch += 1
        if run.batch_in_epoch == run.steps_per_epoch:
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        run.log.advance()
        last = run.step == run.total_steps
        stop_here = cfg.stop_at_step is not None and run.step >= cfg.stop_at_step
        do_eval = last or (cfg.eval_interval and run.step % cfg.eval_interval == 0)
        do_save = (last or stop_here or do_eval
                   or (cfg.checkpoint_interval and run.step % cfg.checkpoint_interval == 0))
        if run.step % cfg.log_interval == 0 or do_save:
            run.losses.flush()
        elif run.device.type == "cpu":
            # A host read costs nothing on CPU: stop on the very step that went bad.
            run.losses.check_latest()
        if do_eval:
            evaluate_and_keep_best(run)
        if do_save:
            # After the evaluation, so that the saved "best" already counts it.
            save(run, "last.pt")
            run.last_saved_step = run.step
        if last or stop_here or run.batch_in_epoch == 0:
            # batch_in_epoch == 0: the epoch is complete (drop_last leaves a remainder).
            break


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the detached ``[total, loc, conf]`` losses (left on
    the device: no host sync)."""
    from .model.loss import check_targets

    check_targets(batch["gt_boxes"], batch["gt_labels"], batch["gt_counts"], batch["images"].shape[0],
                  run.num_classes)
    device = run.device
    images = batch["images"].to(device, non_blocking=True).contiguous(memory_format=run.memory_format)
    gt_boxes = batch["gt_boxes"].to(device, non_blocking=True)
    gt_labels = batch["gt_labels"].to(device, non_blocking=True)
    gt_counts = batch["gt_counts"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        loc, conf = run.model(images)
    # The loss (matching, log-softmax, hard negative mining) runs in fp32. Its own checks read
    # values (a host sync per step on a GPU) and would raise on one rank only, leaving the others
    # waiting in the gradient all-reduce; targets were checked on the host above and non-finite
    # losses are caught for all ranks by LossBuffer.flush().
    ignore = {k: batch[k].to(device, non_blocking=True) for k in ("ignore_boxes", "ignore_counts") if k in batch}
    losses = run.core.loss(loc.float(), conf.float(), gt_boxes, gt_labels, gt_counts, check=False, **ignore)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(losses["total"]).backward()
    if run.cfg.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    return torch.stack([losses["total"].detach(), losses["loc"].detach(), losses["conf"].detach()])


class LossBuffer:
    """Loss values of the steps since the last log point. They stay on the device, so a GPU step
    needs no host sync; the buffer is checked (and logged) every ``log_interval`` steps and
    before every checkpoint, and a non-finite loss stops the run (:class:`NonFiniteLossError`)."""

    def __init__(self, run: Run):
        self.run = run
        self.pending: list[torch.Tensor] = []
        self.first_step = run.step + 1
        self.interval_start = time.time()

    def add(self, values: torch.Tensor) -> None:
        self.pending.append(values)

    def check_latest(self) -> None:
        self._stop_if_nonfinite(distributed.all_reduce_mean(self.pending[-1][None].float()).cpu().double(),
                                self.run.step)

    def flush(self) -> None:
        run = self.run
        if not self.pending:
            return
        values = distributed.all_reduce_mean(torch.stack(self.pending).float()).cpu().double()
        self._stop_if_nonfinite(values, self.first_step)
        elapsed = max(time.time() - self.interval_start, 1e-9)
        mean = values.mean(dim=0)
        run.log.train_row({
            "step": run.step, "epoch": run.epoch, "lr": run.optimizer.param_groups[0]["lr"],
            "loss": mean[0].item(), "loc": mean[1].item(), "conf": mean[2].item(),
            "images_per_s": round(len(self.pending) * run.cfg.batch_size / elapsed, 2),
        })
        self.pending = []
        self.first_step = run.step + 1
        self.interval_start = time.time()

    def _stop_if_nonfinite(self, values: torch.Tensor, first_step: int) -> None:
        """``values [n,3]`` (rank means of total/loc/conf) of steps ``first_step...``."""
        finite = torch.isfinite(values).all(dim=1)
        if bool(finite.all()):
            return
        run = self.run
        row = int((~finite).nonzero()[0, 0])
        bad = first_step + row
        kept = (f"the last good checkpoint is {run.out_dir / 'last.pt'} (step {run.last_saved_step}), "
                f"resume from it with a lower lr or --grad-clip"
                if run.last_saved_step is not None else "no checkpoint had been written yet")
        message = (f"non-finite loss at step {bad} (epoch {run.epoch}, loss {values[row, 0].item()}, "
                   f"loc {values[row, 1].item()}, conf {values[row, 2].item()}); training stopped "
                   f"without saving; {kept}")
        run.log.message(message)
        raise NonFiniteLossError(message, bad)


def evaluate_and_keep_best(run: Run) -> dict[str, Any]:
    """Val mAP now (logged); a new best (NaN never counts: a split without ground truth) is
    saved as ``best.pt``."""
    metrics = evaluate(run.core, run.val_loader, run.val_sampler, run.bundle, run.device, run.amp_dtype,
                       run.memory_format, run.cfg.eval_iou, run.info, tile_spec(run.cfg))
    run.last_metrics = metrics
    run.log.eval_row(run.step, metrics)
    best = run.best
    if not math.isnan(metrics["mAP"]) and (best["mAP"] is None or metrics["mAP"] > best["mAP"]):
        best.update({"mAP": metrics["mAP"], "step": run.step})
        save(run, "best.pt")
    return metrics


def save(run: Run, name: str) -> None:
    """Write a checkpoint at the current position (rank 0 writes; every rank takes part, since
    the RNG states of all ranks are gathered)."""
    rngs = distributed.all_gather_object(ckpt.rng_state())
    if run.info.is_main:
        state = _checkpoint_state(run.cfg, run.model, run.optimizer, run.scheduler, run.scaler, run.step,
                                  run.epoch, run.batch_in_epoch, run.best, rngs, run.bundle.class_names,
                                  run.info.world_size)
        ckpt.atomic_save(state, run.out_dir / name)


def _summary(run: Run, stopped_early: bool, wall_s: float) -> dict[str, Any]:
    cfg, best, last_metrics = run.cfg, run.best, run.last_metrics
    summary = {
        "steps": run.step,
        "total_steps": run.total_steps,
        "stopped_early": stopped_early,
        "metrics": last_metrics,
        "best": best,
        "wall_s": wall_s,
        "out_dir": str(run.out_dir),
        "world_size": run.info.world_size,
    }
    if run.info.is_main and last_metrics is not None and not stopped_early:
        best_text = (f"best {best['mAP']:.4f} at step {best['step']}" if best["mAP"] is not None
                     else "no best: no val ground truth")
        print(last_metrics["table"], flush=True)
        print(f"done: {run.step} steps in {wall_s:.0f} s; val mAP@{cfg.eval_iou} (VOC07 "
              f"11-point) {last_metrics['mAP']:.4f} ({best_text}); checkpoints in {run.out_dir}",
              flush=True)
    return summary


def _check_resumable(state: dict, cfg: TrainConfig, path: Path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
    saved = state["config"]
    for key in _MUST_MATCH:
        if saved.get(key) != getattr(cfg, key):
            raise RuntimeError(
                f"{path}: cannot resume: checkpoint has {key}={saved.get(key)!r}, this run "
                f"{key}={getattr(cfg, key)!r}")
    for key in _MAY_CHANGE:
        if key in saved and saved[key] != getattr(cfg, key) and distributed.info().is_main:
            print(f"note: resuming with {key}={getattr(cfg, key)!r} (the checkpoint's run had "
                  f"{saved[key]!r}); it applies from step {state.get('step')} on",
                  flush=True)


def _load_backbone(model, path: str) -> None:
    from .model.detector import load_pretrained_backbone

    loaded = load_pretrained_backbone(model, path)
    if distributed.info().is_main:
        print(f"loaded {len(loaded)} backbone tensors from {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_mod.from_args(argv)
    except config_mod.ConfigError as error:
        print(f"mdssd.train: {error}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except NonFiniteLossError as error:
        print(f"mdssd.train: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # A run that cannot start (a bad annotation, a missing file, a checkpoint of another run)
        # says why in one line, as argument errors do; MDSSD_TRACEBACK=1 shows the traceback.
        if not getattr(error, "during_setup", False) or os.environ.get("MDSSD_TRACEBACK"):
            raise
        print(f"mdssd.train: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


def one_line(error: BaseException) -> str:
    """The error's message on one line; the type's name first unless the message is ours or an
    OS error's (which name the problem themselves)."""
    text = " ".join(str(error).split()) or repr(error)
    ours = isinstance(error, (config_mod.ConfigError, OSError)) or type(error).__module__.startswith("mdssd")
    return text if ours else f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())

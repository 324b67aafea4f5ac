"""Inference runners: ``runner(images [B,3,S,S]) -> (boxes, scores, labels, counts)``.

A runner is what the inference pipeline calls per batch; all of them compute what
``model.postprocess(*model(images))`` computes (fixed-shape detections, see
:meth:`mdssd.model.Detector.postprocess`), so they are interchangeable:

* :func:`eager_runner`: the model as it is.
* :func:`compiled_runner`: backbone, heads and post-processing under ``torch.compile`` (our ops
  stay single nodes: they have fake kernels).
* :class:`CudaGraphRunner`: backbone, heads and post-processing captured as one CUDA graph for a
  fixed batch shape and replayed per batch (no Python or kernel-launch overhead per layer; the
  post-processing is fixed-shape and never synchronises the host, so all of it is captured).
  Images are copied into a static input buffer; a last partial batch is padded (with zeros) and
  its detections cut back to its size; a batch larger than the captured one runs in captured
  chunks; images of another size, dtype or device, or with non-contiguous channels, fall back to
  the eager model (counted in ``fallbacks``).

Outputs are fresh tensors (copied out of the static buffers), so a caller may keep them across
calls. Without CUDA the graph runner still works with ``capture=False``: the same static buffers,
padding and fallback, with an eager call in place of the replay (what the CPU tests check).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["Runner", "eager_runner", "compiled_runner", "CudaGraphRunner", "cuda_graph_runner",
           "add_runner_arguments", "runner_from_args"]

Detections = tuple[Tensor, Tensor, Tensor, Tensor]
Runner = Callable[[Tensor], Detections]


def eager_runner(model, amp_dtype: torch.dtype | None = None) -> Runner:
    """The model in eager mode (the reference every other runner is compared with): eval mode set,
    then :class:`mdssd.inference.step4_batches.ModelRunner`, the pipeline's default runner."""
    from .inference.step4_batches import ModelRunner

    model.eval()
    return ModelRunner(model, amp_dtype)


def compiled_runner(model, mode: str | None = None, amp_dtype: torch.dtype | None = None,
                    dynamic: bool | None = False, backend: str = "inductor") -> Runner:
    """Backbone, heads and post-processing as one ``torch.compile`` graph.

    ``mode``: ``None`` (default), ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"`` (CUDA
    graphs by inductor), ... as ``torch.compile`` takes. The first call per batch shape compiles
    (seconds to a minute); ``dynamic=False`` specialises on the batch size, so a last partial
    batch compiles once more (give :class:`CudaGraphRunner` or a padded batch where that matters).
    """
    return torch.compile(eager_runner(model, amp_dtype).__call__, mode=mode, dynamic=dynamic, fullgraph=True,
                         backend=backend)


class CudaGraphRunner:
    """Model forward + post-processing replayed from static buffers for batches of
    ``batch_size`` images of ``image_size`` (the model's by default); see the module docstring.

    Args:
        model: a :class:`~mdssd.model.Detector` on its device (eval mode is set).
        batch_size: the captured batch size.
        amp_dtype: autocast dtype of the forward (e.g. ``torch.bfloat16``), or None.
        channels_last: the static input buffer's memory format.
        capture: capture a CUDA graph (default: when the model is on CUDA). ``False`` keeps the
            buffers, padding and fallback but calls the model eagerly (CPU, debugging).
        warmup: eager calls on a side stream before the capture (cuDNN/cuBLAS pick their
            algorithms and workspaces there, outside the graph).
    """

    def __init__(self, model, batch_size: int, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False, capture: bool | None = None, warmup: int = 3,
                 image_size: int | None = None, dtype: torch.dtype = torch.float32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device = next(model.parameters()).device
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise ValueError(f"CUDA graph capture needs the model on a CUDA device, not {self.device}")
        size = image_size or model.config.image_size
        self.batch_size = batch_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.static_images = torch.zeros((batch_size, 3, size, size), device=self.device,
                                         dtype=dtype).contiguous(memory_format=self.memory_format)
        self._detect = eager_runner(model, amp_dtype)
        self._warmup = warmup
        self._graph = None
        self.static_outputs: Detections | None = None
        self.replays = 0
        self.fallbacks = 0

    # -- the captured call ---------------------------------------------------------------------
    def _prepare(self) -> None:
        if not self.capture:
            self.static_outputs = tuple(t.clone() for t in self._detect(self.static_images))
            return
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(max(1, self._warmup)):
                self._detect(self.static_images)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_outputs = self._detect(self.static_images)
        self._graph = graph

    def _replay(self) -> None:
        if self.static_outputs is None:
            self._prepare()
        if self._graph is not None:
            self._graph.replay()
        else:
            for buffer, value in zip(self.static_outputs, self._detect(self.static_images)):
                buffer.copy_(value)
        self.replays += 1

    # -- calls ---------------------------------------------------------------------------------
    def accepts(self, images: Tensor) -> bool:
        """Whether ``images`` can go through the static buffer (else the eager model runs)."""
        return (images.dim() == 4 and images.shape[1:] == self.static_images.shape[1:]
                and images.device == self.device and images.dtype == self.static_images.dtype
                and images.shape[0] >= 1)

    def __call__(self, images: Tensor) -> Detections:
        if not self.accepts(images):
            self.fallbacks += 1
            return self._detect(images)
        parts = [self._run_chunk(images[i:i + self.batch_size])
                 for i in range(0, images.shape[0], self.batch_size)]
        if len(parts) == 1:
            return parts[0]
        return tuple(torch.cat(column) for column in zip(*parts))

    def _run_chunk(self, images: Tensor) -> Detections:
        n = images.shape[0]
        self.static_images[:n].copy_(images)
        if n < self.batch_size:
            self.static_images[n:].zero_()  # padding: its detections are cut off below
        self._replay()
        return tuple(t[:n].clone() for t in self.static_outputs)


def cuda_graph_runner(model, batch_size: int, **kwargs) -> CudaGraphRunner:
    """:class:`CudaGraphRunner` (same arguments): the factory the inference pipeline calls."""
    return CudaGraphRunner(model, batch_size, **kwargs)


# -- command line (mdssd.detect, mdssd.eval) ------------------------------------------------------
def add_runner_arguments(parser) -> None:
    """``--compile [MODE]`` or ``--cuda-graphs``: the runner of the inference batches."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                       help="inference batches through the model and its post-processing under torch.compile "
                            "(MODE: default, max-autotune-no-cudagraphs, ...; the first batch compiles for "
                            "minutes on a CPU)")
    group.add_argument("--cuda-graphs", action="store_true",
                       help="inference on a GPU: model + post-processing replayed as one CUDA graph per "
                            "fixed-shape batch (mdssd.cuda_graphs)")


def runner_from_args(args, model, batch_size: int) -> Runner | None:
    """The runner :func:`add_runner_arguments`' flags ask for, for batches of ``batch_size``, or
    None (neither flag: the pipeline's eager default). ValueError: ``--cuda-graphs`` with the model
    off CUDA."""
    if args.cuda_graphs:
        if next(model.parameters()).device.type != "cuda":
            raise ValueError("--cuda-graphs needs a CUDA device")
        return cuda_graph_runner(model, batch_size)
    if args.compile:
        return compiled_runner(model, None if args.compile == "default" else args.compile)
    return None

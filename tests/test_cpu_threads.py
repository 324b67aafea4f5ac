"""The CPU kernels' own fork-join (csrc/cpu/parallel.h): the same results at any thread count,
from concurrent callers, and in a forked child after the parent's helper threads ran."""

import multiprocessing as mp
import threading

import pytest
import torch

import mdssd  # noqa: F401
from benchmarks import inputs
from mdssd import ops, reference


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _iou_inputs():
    g = torch.Generator().manual_seed(3)
    pri, _ = inputs.priors("mdssd300")
    return reference.point_form(pri), inputs.small_boxes((50,), g)



def test_box_iou_identical_at_1_2_and_4_threads(threads):
    a, b = _iou_inputs()  # 1.5M pairs: many chunks at 2 and 4 threads
    outs = []
    for n in (1, 2, 4):
        torch.set_num_threads(n)
        outs.append(ops.box_iou(a, b))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.equal(outs[0], reference.box_iou(a, b))


def test_concurrent_callers_get_their_own_results(threads):
    # Two Python threads calling at once: one uses the helpers, the other runs inline.
    torch.set_num_threads(2)
    a, b = _iou_inputs()
    expected = ops.box_iou(a, b)
    g = torch.Generator().manual_seed(5)
    boxes, scores, idxs = inputs.nms_candidates(10_000, g)
    expected_nms = ops.batched_nms(boxes, scores, idxs, 0.5)
    failures = []

    def worker(k):
        for _ in range(5):
            if k % 2:
                ok = torch.equal(ops.box_iou(a, b), expected)
            else:
                ok = torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), expected_nms)
            if not ok:
                failures.append(k)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a caller hung"
    assert failures == []


def _child(queue):
    # torch's own parallel ops hang in a forked child whose parent ran OpenMP (a GNU OpenMP
    # limitation, not ours): everything but our op runs on one thread here.
    torch.set_num_threads(1)
    a, b = _iou_inputs()
    torch.set_num_threads(2)
    out = ops.box_iou(a, b)  # ours, at 2 threads, in the child
    torch.set_num_threads(1)
    queue.put(float(out.double().sum()))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_forked_child_after_parallel_use(threads):
    # DataLoader workers are forked: the child has none of the parent's helper threads and must
    # start its own pool instead of waiting for them.
    torch.set_num_threads(2)
    a, b = _iou_inputs()
    expected = float(ops.box_iou(a, b).double().sum())  # the parent's helpers exist now
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0, "the forked child failed or hung"
    assert queue.get(timeout=5) == expected

// The one way the CPU kernels go parallel. Threading rule (benchmarks/README.md, "Threads"):
//
//  * A loop goes parallel only when it has at least two chunks of work, a chunk being about
//    kChunkNs of single-thread time, from the per-item costs measured by
//    `python -m benchmarks.grains` (grain_for turns a measured cost into a chunk size). Below
//    that the calling thread runs it inline: waking a second thread costs more than it saves.
//  * The calling thread never waits for a thread that has not started: chunks are taken from a
//    shared counter, the caller takes them too, and it waits only for chunks a helper has
//    already taken (and it waits blocked, never spinning). A helper that the OS has not
//    scheduled yet (because the cores are busy, e.g. with another process's threads) finds no
//    work left when it does run. With at::parallel_for (OpenMP) the caller waited at a barrier
//    for every thread of the team, spinning first: beside another torch process doing parallel
//    work every parallel region cost up to a scheduler timeslice, and ops ran 10-50x slower at
//    2 threads than on one (issue 12).
//  * Backing off when helpers are late: a helper can still be descheduled in the middle of a
//    chunk it claimed, and the caller then waits for it (up to a timeslice). After every
//    parallel loop the caller compares the loop's time with its own time per item times the
//    whole range; when going parallel did not pay, loops run on the calling thread for a
//    back-off period (5 ms, doubled per further late loop up to 200 ms, halved per loop that
//    paid), then probe the helpers again (parallel.cpp, Backoff).
//  * The thread count is torch's (at::get_num_threads(), so torch.set_num_threads and
//    OMP_NUM_THREADS apply); one thread, a call from inside a parallel loop (ours or torch's), or
//    a second caller while the helpers are busy runs inline.
//
// fn(begin, end) is called on disjoint chunks [begin, end) covering the range; which thread runs
// which chunk varies from call to call, so results must not depend on it (each kernel writes
// per-item outputs or per-chunk partial sums at fixed chunk boundaries).
#pragma once

#include <cstdint>
#include <functional>

namespace mdssd {

// Single-thread time a chunk should hold: large against the ~10-50 us of waking a thread, and
// large enough that the rare wait for a helper that the OS preempted in the middle of its chunk
// stays small against the loop. 150 us was measured too small beside a busy neighbour on a
// loaded 2-core machine (l2norm_sum backward on [1,256,38,38], three ~0.5 ms chunks, ran 5.7x
// slower at 2 threads than on one); 500 us puts loops under ~1 ms of work on one thread.
constexpr double kChunkNs = 500e3;

// Items per chunk for a measured single-thread cost per item (nanoseconds); chunk_ns: the
// single-thread time a chunk should hold (kChunkNs unless a kernel measured another).
inline int64_t grain_for(double ns_per_item, double chunk_ns = kChunkNs) {
  const double items = chunk_ns / (ns_per_item > 0 ? ns_per_item : 1.0);
  return items < 1 ? 1 : items > 4e18 ? int64_t(4e18) : static_cast<int64_t>(items);
}

void parallel_for(int64_t begin, int64_t end, int64_t grain,
                  const std::function<void(int64_t, int64_t)>& fn);

}  // namespace mdssd

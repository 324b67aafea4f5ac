// ssd_postprocess on CUDA: softmax, decode + clip, per-class threshold / top-k / NMS, keep-top-k
// per image, fixed-shape outputs; semantics and tie-breaks of csrc/cpu/ssd_postprocess.cpp and
// mdssd/reference.py. Three launches, no host synchronisation, no allocation (CUDA-graph safe):
//
//   1. softmax_decode: one thread per (image, prior). Reads the K logits, writes the K-1
//      foreground scores class-major ([B, K-1, P], so stage 2 reads one class contiguously) and
//      the decoded, clipped box. Traffic per prior: K + 8 values read (conf, loc, prior),
//      K - 1 + 4 written.
//   2. class_nms: one 256-thread block per (image, foreground class). Exact top-k selection of
//      the scores > threshold by radix select on an order-preserving key (8-bit digits: 4 passes
//      over the class's P scores for float32, 8 for float64; a pass is skipped entirely when
//      fewer than k pass the threshold), then one ordered pass that collects the winners (ties
//      at the k-th score: lowest prior index, found with warp ballots in prior order), a rank
//      sort of the <= k winners (keys are unique: score, then prior), their boxes, the
//      k x ceil(k/64) IoU bit mask and the greedy scan (warp 0, only kept rows cost a serial
//      step). Candidates, boxes and mask live in shared memory (k = 400: 32 KB float32, 40 KB
//      float64); larger k falls back to a global-memory scratch per block. Traffic per block:
//      (passes + 1) * P scores read (from L2 after the first), k boxes read, kept list written.
//   3. merge: one 256-thread block per image. The classes' kept lists, laid out class after
//      class in rank order, are one array in which "lower position" is exactly the tie-break
//      (class, then prior); the same block top-k selection picks the best keep_top_k, which are
//      written with their boxes, padding rows (box 0, score 0, label -1) and the count.
#include <cstddef>
#include <cstdint>

#include "box_math.h"
#include "cuda/cuda_utils.cuh"
#include "cuda/ssd_postprocess_kernel.h"

namespace mdssd {
namespace cuda {
namespace {

using u64 = unsigned long long;  // the type of CUDA's 64-bit bit intrinsics (__ffsll, __popcll)

constexpr int kThreads = 256;  // selection / NMS / merge blocks
constexpr int kWarps = kThreads / 32;
constexpr int kDecodeThreads = 256;
constexpr int kRadixBits = 8;
constexpr int kBins = 1 << kRadixBits;
// Dynamic shared memory a block may use; with the static SelectShared (~1.1 KB) it stays under
// the 48 KB that needs no opt-in, so no cudaFuncSetAttribute call (not a stream operation) is
// needed before a launch.
constexpr size_t kSharedBudget = 46 * 1024;
constexpr int64_t kMaxInt = 0x7fffffff;
// Items a block_select_topk loop may cover (num_priors in stage 2, num_fg * cap in stage 3): its
// `base += kThreads` and `base + tid` are int and must not pass kMaxInt on the last chunk.
constexpr int64_t kMaxItems = kMaxInt - kThreads;

template <typename T>
struct KeyBits {
  static constexpr int value = static_cast<int>(sizeof(T) * 8);
};

__host__ __device__ __forceinline__ size_t align16(size_t x) { return (x + 15) / 16 * 16; }

// Per-block scratch of the selection (both stages) and of the class NMS (stage 2). The selected
// keys/items are dead once sorted, so the NMS mask reuses their bytes.
struct ScratchLayout {
  size_t sel_key, sel_item, order, boxes, areas, removed, kept_words, total;
};

template <typename T>
__host__ __device__ ScratchLayout scratch_layout(int cap, bool with_nms) {
  const size_t words = (static_cast<size_t>(cap) + 63) / 64;
  ScratchLayout l{};
  size_t o = 0;
  l.sel_key = o;
  const size_t selection = align16(cap * sizeof(u64)) + align16(cap * sizeof(uint32_t));
  l.sel_item = align16(cap * sizeof(u64));
  const size_t mask = with_nms ? cap * words * sizeof(u64) : 0;
  o += align16(selection > mask ? selection : mask);
  l.order = o;
  o += align16(cap * sizeof(uint32_t));
  l.boxes = o;
  l.areas = o;
  l.removed = o;
  l.kept_words = o;
  if (with_nms) {
    o += align16(cap * 4 * sizeof(T));
    l.areas = o;
    o += align16(cap * sizeof(T));
    l.removed = o;
    o += align16(words * sizeof(u64));
    l.kept_words = o;
    o += align16(words * sizeof(u64));
  }
  l.total = o;
  return l;
}

struct SelectShared {
  unsigned int hist[kBins];
  unsigned int warp_counts[kWarps];
  u64 prefix;
  unsigned int need;
  unsigned int total;
  unsigned int slots;
  int select_all;
};

// Block-wide exact top-k. Among the items i in [0, n) for which load(i, key) returns true, picks
// the k with the largest key, ties to the lower i, and writes their items best first to
// order[0 .. count); returns count = min(k, number of valid items). sel_key/sel_item need room
// for k entries. Every thread of the block must call it (it synchronises).
template <int Bits, typename Load>
__device__ int block_select_topk(int n, int k, const Load& load, u64* sel_key, uint32_t* sel_item,
                                 uint32_t* order, SelectShared& sh) {
  if (k <= 0) return 0;
  const int tid = threadIdx.x;
  const int lane = tid & 31, warp = tid >> 5;
  u64 prefix = 0;
  unsigned int need = static_cast<unsigned int>(k);
  bool all = false;
  // Radix select: after the passes, `prefix` is the k-th largest key and `need` the number of
  // items equal to it that belong to the top k.
  for (int shift = Bits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int d = tid; d < kBins; d += kThreads) sh.hist[d] = 0;
    __syncthreads();
    const int high = shift + kRadixBits;  // bits above the digit must equal the prefix
    const u64 high_mask = high >= 64 ? 0ull : ~((1ull << high) - 1);
    // Softmax scores crowd into a few digits, so lanes with the same digit add once together
    // (shared atomics on one address serialise). The loop bound is block-uniform so that every
    // lane reaches __match_any_sync.
    for (int base = 0; base < n; base += kThreads) {
      const int i = base + tid;
      u64 key = 0;
      const bool counted = i < n && load(i, key) && ((key ^ prefix) & high_mask) == 0;
      const unsigned int digit = counted ? static_cast<unsigned int>((key >> shift) & (kBins - 1))
                                         : static_cast<unsigned int>(kBins);
      const unsigned int peers = __match_any_sync(0xffffffffu, digit);
      if (counted && __ffs(peers) - 1 == lane) atomicAdd(&sh.hist[digit], __popc(peers));
    }
    __syncthreads();
    if (tid == 0) {
      if (shift == Bits - kRadixBits) {
        unsigned int total = 0;
        for (int d = 0; d < kBins; ++d) total += sh.hist[d];
        sh.total = total;
        sh.select_all = total <= static_cast<unsigned int>(k);
      }
      if (!sh.select_all) {
        unsigned int above = 0;
        int d = kBins - 1;
        for (; d > 0; --d) {
          if (above + sh.hist[d] >= need) break;
          above += sh.hist[d];
        }
        sh.prefix = prefix | (static_cast<u64>(d) << shift);
        sh.need = need - above;
      }
      sh.slots = 0;
    }
    __syncthreads();
    all = sh.select_all != 0;
    if (all) break;
    prefix = sh.prefix;
    need = sh.need;
  }
  // Collect: every item above the k-th key, and the first `need` items equal to it in item
  // order. Slots come from a shared counter (any order: the rank sort below fixes it).
  unsigned int equal_seen = 0;  // same value in every thread
  for (int base = 0; base < n; base += kThreads) {
    const int i = base + tid;
    u64 key = 0;
    const bool valid = i < n && load(i, key);
    bool take = valid && (all || key > prefix);
    const bool equal = valid && !all && key == prefix;
    const unsigned int ballot = __ballot_sync(0xffffffffu, equal);
    if (lane == 0) sh.warp_counts[warp] = __popc(ballot);
    __syncthreads();
    unsigned int before = 0, chunk = 0;
    for (int w = 0; w < kWarps; ++w) {
      const unsigned int c = sh.warp_counts[w];
      before += w < warp ? c : 0u;
      chunk += c;
    }
    if (equal && equal_seen + before + __popc(ballot & ((1u << lane) - 1u)) < need) take = true;
    equal_seen += chunk;
    if (take) {
      const unsigned int slot = atomicAdd(&sh.slots, 1u);
      sel_key[slot] = key;
      sel_item[slot] = static_cast<uint32_t>(i);
    }
    __syncthreads();  // warp_counts is rewritten by the next chunk
  }
  const int count = all ? static_cast<int>(sh.total) : k;
  // Rank sort: keys are unique once the item breaks ties, so ranks are a permutation.
  for (int a = tid; a < count; a += kThreads) {
    const u64 ka = sel_key[a];
    const uint32_t ia = sel_item[a];
    int rank = 0;
    for (int b = 0; b < count; ++b) {
      const u64 kb = sel_key[b];
      rank += (kb > ka || (kb == ka && sel_item[b] < ia)) ? 1 : 0;
    }
    order[rank] = ia;
  }
  __syncthreads();
  return count;
}

// Stage 1.
template <typename T>
__global__ void __launch_bounds__(kDecodeThreads)
    softmax_decode_kernel(const T* __restrict__ loc, const T* __restrict__ conf,
                          const T* __restrict__ priors, int64_t rows, int64_t num_priors,
                          int num_classes, T variance_xy, T variance_wh, T* __restrict__ scores,
                          T* __restrict__ boxes) {
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  const int64_t b = row / num_priors, p = row - b * num_priors;
  const T* logits = conf + row * num_classes;
  // Same operations in the same order as the CPU kernel: max, then a left-to-right sum, all in
  // float64 and rounded to T at the end (see exp_rounded in box_math.h). float32 results agree
  // with the CPU bit for bit except when the float64 values straddle a float32 rounding boundary
  // (rare: CUDA's double exp is within 1 ulp, not always correctly rounded); float64 results
  // may differ in the last bit. The tests allow for both.
  double max_logit = logits[0];
  for (int k = 1; k < num_classes; ++k) {
    const double x = logits[k];
    max_logit = max_logit < x ? x : max_logit;
  }
  double sum = 0;
  for (int k = 0; k < num_classes; ++k) sum += ::exp(static_cast<double>(logits[k]) - max_logit);
  const int64_t num_fg = num_classes - 1;
  T* s = scores + b * num_fg * num_priors + p;
  for (int k = 1; k < num_classes; ++k) {
    s[(k - 1) * num_priors] = static_cast<T>(::exp(static_cast<double>(logits[k]) - max_logit) / sum);
  }
  T box[4];
  decode_box(loc + 4 * row, priors + 4 * p, variance_xy, variance_wh, box);
  T* o = boxes + 4 * row;
  o[0] = box[0];
  o[1] = box[1];
  o[2] = box[2];
  o[3] = box[3];
}

// Stage 2: block `task` = image * num_fg + (class - 1).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    class_nms_kernel(const T* __restrict__ scores, const T* __restrict__ boxes, int num_priors,
                     int num_fg, int cap, T score_threshold, T iou_threshold,
                     unsigned char* __restrict__ global_scratch, size_t scratch_bytes,
                     bool scratch_in_shared, T* __restrict__ kept_score,
                     int32_t* __restrict__ kept_prior, int32_t* __restrict__ kept_count) {
  extern __shared__ __align__(16) unsigned char shared_scratch[];
  __shared__ SelectShared sh;
  const int tid = threadIdx.x;
  const int64_t task = blockIdx.x;
  const int64_t image = task / num_fg;
  unsigned char* scratch =
      scratch_in_shared ? shared_scratch : global_scratch + task * static_cast<int64_t>(scratch_bytes);
  const ScratchLayout l = scratch_layout<T>(cap, true);
  u64* sel_key = reinterpret_cast<u64*>(scratch + l.sel_key);
  uint32_t* sel_item = reinterpret_cast<uint32_t*>(scratch + l.sel_item);
  u64* mask = reinterpret_cast<u64*>(scratch + l.sel_key);  // reuses the selection's bytes
  uint32_t* order = reinterpret_cast<uint32_t*>(scratch + l.order);
  T* cand_boxes = reinterpret_cast<T*>(scratch + l.boxes);
  T* cand_areas = reinterpret_cast<T*>(scratch + l.areas);
  u64* removed = reinterpret_cast<u64*>(scratch + l.removed);
  u64* kept_words = reinterpret_cast<u64*>(scratch + l.kept_words);

  const T* s = scores + task * num_priors;
  const auto load = [s, score_threshold](int p, u64& key) {
    const T v = s[p];
    key = score_key(v);
    return v > score_threshold;
  };
  const int n = block_select_topk<KeyBits<T>::value>(num_priors, cap, load, sel_key, sel_item,
                                                     order, sh);

  // Candidates' boxes in rank order.
  const T* image_boxes = boxes + image * num_priors * 4;
  for (int i = tid; i < n; i += kThreads) {
    const T* b = image_boxes + 4 * static_cast<int64_t>(order[i]);
    const T x1 = b[0], y1 = b[1], x2 = b[2], y2 = b[3];
    cand_boxes[4 * i + 0] = x1;
    cand_boxes[4 * i + 1] = y1;
    cand_boxes[4 * i + 2] = x2;
    cand_boxes[4 * i + 3] = y2;
    cand_areas[i] = box_area(x1, y1, x2, y2);
  }
  const int words = (n + 63) / 64;
  for (int w = tid; w < words; w += kThreads) removed[w] = 0;
  __syncthreads();

  // Mask word (i, w): bit j says candidate w*64+j (> i) has IoU > threshold with candidate i.
  // Words left of i's own are never read, so they are not computed. Work items run i fastest,
  // so the lanes of a warp share w and read the same candidate j at the same time (a shared
  // memory broadcast; with w fastest, lanes would read boxes 64 apart, in the same bank).
  const int mask_words = n * words;
  for (int t = tid; t < mask_words; t += kThreads) {
    const int w = t / n, i = t - w * n;
    if (w < (i >> 6)) continue;
    const T* a = cand_boxes + 4 * i;
    const T x1 = a[0], y1 = a[1], x2 = a[2], y2 = a[3], area = cand_areas[i];
    const int j1 = (w * 64 + 64 < n) ? w * 64 + 64 : n;
    u64 bits = 0;
    for (int j = w * 64; j < j1; ++j) {
      if (j <= i) continue;  // a per-lane skip, so the lanes stay on the same j
      const T* c = cand_boxes + 4 * j;
      if (box_iou(x1, y1, x2, y2, area, c[0], c[1], c[2], c[3], cand_areas[j]) > iou_threshold) {
        bits |= 1ull << (j - w * 64);
      }
    }
    mask[i * words + w] = bits;
  }
  __syncthreads();

  // Greedy scan, warp 0. Every lane computes the same serial decisions (no divergence, no
  // broadcast needed); lanes share the OR of kept rows into the words to the right.
  if (tid < 32) {
    for (int wb = 0; wb < words; ++wb) {
      const int rows = (n - wb * 64 < 64) ? n - wb * 64 : 64;
      const u64 kept = greedy_tile(removed[wb], rows,
                                   [&](int bit) { return mask[(wb * 64 + bit) * words + wb]; });
      if (tid == 0) kept_words[wb] = kept;
      for (int x = wb + 1 + tid; x < words; x += 32) {
        u64 acc = removed[x];
        u64 pending = kept;
        while (pending != 0) {
          const int bit = __ffsll(static_cast<long long>(pending)) - 1;
          pending &= pending - 1;
          acc |= mask[(wb * 64 + bit) * words + x];
        }
        removed[x] = acc;
      }
      __syncwarp();
    }
  }
  __syncthreads();

  // Kept candidates, in rank order, to this task's list.
  const int64_t list = task * cap;
  for (int i = tid; i < n; i += kThreads) {
    const int w = i >> 6, bit = i & 63;
    const u64 kw = kept_words[w];
    if ((kw >> bit) & 1ull) {
      int pos = __popcll(kw & ((1ull << bit) - 1));
      for (int x = 0; x < w; ++x) pos += __popcll(kept_words[x]);
      const uint32_t p = order[i];
      kept_score[list + pos] = s[p];
      kept_prior[list + pos] = static_cast<int32_t>(p);
    }
  }
  if (tid == 0) {
    int total = 0;
    for (int x = 0; x < words; ++x) total += __popcll(kept_words[x]);
    kept_count[task] = total;
  }
}

// Stage 3: block = image.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const T* __restrict__ boxes, const T* __restrict__ kept_score,
                 const int32_t* __restrict__ kept_prior, const int32_t* __restrict__ kept_count,
                 int64_t num_priors, int num_fg, int cap, int select_cap, int64_t keep_top_k,
                 unsigned char* __restrict__ global_scratch, size_t scratch_bytes,
                 bool scratch_in_shared, T* __restrict__ out_boxes, T* __restrict__ out_scores,
                 int64_t* __restrict__ out_labels, int64_t* __restrict__ out_counts) {
  extern __shared__ __align__(16) unsigned char shared_scratch[];
  __shared__ SelectShared sh;
  const int tid = threadIdx.x;
  const int64_t image = blockIdx.x;
  unsigned char* scratch = scratch_in_shared
                               ? shared_scratch
                               : global_scratch + image * static_cast<int64_t>(scratch_bytes);
  const ScratchLayout l = scratch_layout<T>(select_cap, false);
  u64* sel_key = reinterpret_cast<u64*>(scratch + l.sel_key);
  uint32_t* sel_item = reinterpret_cast<uint32_t*>(scratch + l.sel_item);
  uint32_t* order = reinterpret_cast<uint32_t*>(scratch + l.order);

  const int64_t first_list = image * num_fg;
  const T* scores = kept_score + first_list * cap;
  const int32_t* priors = kept_prior + first_list * cap;
  const int32_t* counts = kept_count + first_list;
  // Item v = class slot c = v / cap, rank r = v % cap: valid when r < the class's kept count, and
  // item order = (class, then rank within the class) = the documented tie-break.
  const auto load = [scores, counts, cap](int v, u64& key) {
    const int c = v / cap, r = v - c * cap;
    if (r >= counts[c]) return false;
    key = score_key(scores[v]);
    return true;
  };
  const int n = block_select_topk<KeyBits<T>::value>(num_fg * cap, select_cap, load, sel_key,
                                                     sel_item, order, sh);

  const T* image_boxes = boxes + image * num_priors * 4;
  for (int64_t r = tid; r < keep_top_k; r += kThreads) {
    const int64_t out = image * keep_top_k + r;
    T* ob = out_boxes + 4 * out;
    if (r < n) {
      const uint32_t v = order[r];
      const T* b = image_boxes + 4 * static_cast<int64_t>(priors[v]);
      ob[0] = b[0];
      ob[1] = b[1];
      ob[2] = b[2];
      ob[3] = b[3];
      out_scores[out] = scores[v];
      out_labels[out] = static_cast<int64_t>(v / cap) + 1;
    } else {
      ob[0] = T(0);
      ob[1] = T(0);
      ob[2] = T(0);
      ob[3] = T(0);
      out_scores[out] = T(0);
      out_labels[out] = -1;
    }
  }
  if (tid == 0) out_counts[image] = n;
}

struct Sizes {
  int64_t batch, num_priors, num_classes, num_fg, keep_top_k;
  int cap;         // candidates per (image, class): min(top_k_per_class, num_priors)
  int select_cap;  // detections per image: min(keep_top_k, num_fg * cap)
};

Sizes sizes_of(int64_t batch, int64_t num_priors, int64_t num_classes, int64_t top_k,
               int64_t keep_top_k) {
  Sizes z;
  z.batch = batch;
  z.num_priors = num_priors;
  z.num_classes = num_classes;
  z.num_fg = num_classes - 1;
  z.keep_top_k = keep_top_k;
  z.cap = static_cast<int>(top_k < num_priors ? top_k : num_priors);
  const int64_t items = z.num_fg * z.cap;
  z.select_cap = static_cast<int>(keep_top_k < items ? keep_top_k : items);
  return z;
}

template <typename T>
struct Workspace {
  T* scores;
  T* boxes;
  T* kept_score;
  int32_t* kept_prior;
  int32_t* kept_count;
  unsigned char* nms_scratch;  // null when it fits in shared memory
  unsigned char* merge_scratch;
  size_t nms_scratch_bytes, merge_scratch_bytes;
  size_t total;
};

template <typename T>
Workspace<T> carve(void* base, const Sizes& z) {
  char* p = static_cast<char*>(base);
  size_t o = 0;
  auto take = [&](size_t bytes) {
    o = (o + 255) / 256 * 256;
    char* at = p != nullptr ? p + o : nullptr;
    o += bytes;
    return at;
  };
  Workspace<T> w;
  const int64_t lists = z.batch * z.num_fg;
  w.scores = reinterpret_cast<T*>(take(sizeof(T) * lists * z.num_priors));
  w.boxes = reinterpret_cast<T*>(take(sizeof(T) * z.batch * z.num_priors * 4));
  w.kept_score = reinterpret_cast<T*>(take(sizeof(T) * lists * z.cap));
  w.kept_prior = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * lists * z.cap));
  w.kept_count = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * lists));
  w.nms_scratch_bytes = align16(scratch_layout<T>(z.cap, true).total);
  w.merge_scratch_bytes = align16(scratch_layout<T>(z.select_cap, false).total);
  w.nms_scratch = nullptr;
  w.merge_scratch = nullptr;
  if (w.nms_scratch_bytes > kSharedBudget) {
    w.nms_scratch = reinterpret_cast<unsigned char*>(take(w.nms_scratch_bytes * lists));
  }
  if (w.merge_scratch_bytes > kSharedBudget) {
    w.merge_scratch = reinterpret_cast<unsigned char*>(take(w.merge_scratch_bytes * z.batch));
  }
  w.total = o;
  return w;
}

template <typename T>
cudaError_t run(const T* loc, const T* conf, const T* priors, const Sizes& z, double variance_xy,
                double variance_wh, double score_threshold, double iou_threshold, void* workspace,
                int64_t workspace_bytes, T* out_boxes, T* out_scores, int64_t* out_labels,
                int64_t* out_counts, cudaStream_t stream) {
  const Workspace<T> w = carve<T>(workspace, z);
  if (w.total > static_cast<size_t>(workspace_bytes)) return cudaErrorInvalidValue;
  // Scalars cast to the data type exactly like the CPU kernel.
  const T vxy = static_cast<T>(variance_xy), vwh = static_cast<T>(variance_wh);
  const T score_thr = static_cast<T>(score_threshold), iou_thr = static_cast<T>(iou_threshold);

  const int64_t rows = z.batch * z.num_priors;
  if (rows > 0) {
    softmax_decode_kernel<T><<<ceil_div(rows, kDecodeThreads), kDecodeThreads, 0, stream>>>(
        loc, conf, priors, rows, z.num_priors, static_cast<int>(z.num_classes), vxy, vwh,
        w.scores, w.boxes);
    MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
  }
  const int64_t lists = z.batch * z.num_fg;
  if (lists > 0) {
    const bool in_shared = w.nms_scratch_bytes <= kSharedBudget;  // as decided in the layout
    class_nms_kernel<T><<<static_cast<unsigned>(lists), kThreads,
                          in_shared ? w.nms_scratch_bytes : 0, stream>>>(
        w.scores, w.boxes, static_cast<int>(z.num_priors), static_cast<int>(z.num_fg), z.cap,
        score_thr, iou_thr, w.nms_scratch, w.nms_scratch_bytes, in_shared, w.kept_score,
        w.kept_prior, w.kept_count);
    MDSSD_RETURN_IF_ERROR(static_cast<cudaError_t>(last_launch_error()));
  }
  const bool merge_in_shared = w.merge_scratch_bytes <= kSharedBudget;
  merge_kernel<T><<<static_cast<unsigned>(z.batch), kThreads,
                    merge_in_shared ? w.merge_scratch_bytes : 0, stream>>>(
      w.boxes, w.kept_score, w.kept_prior, w.kept_count, z.num_priors,
      static_cast<int>(z.num_fg), z.cap, z.select_cap, z.keep_top_k, w.merge_scratch,
      w.merge_scratch_bytes, merge_in_shared, out_boxes, out_scores, out_labels, out_counts);
  return static_cast<cudaError_t>(last_launch_error());
}

}  // namespace

bool ssd_postprocess_fits(int64_t batch, int64_t num_priors, int64_t num_classes,
                          int64_t top_k_per_class) {
  if (batch < 0 || num_priors < 0 || num_classes < 1 || top_k_per_class < 1) return false;
  const int64_t cap = top_k_per_class < num_priors ? top_k_per_class : num_priors;
  const int64_t num_fg = num_classes - 1;
  return cap <= kPostprocessMaxCandidates && num_priors <= kMaxItems && num_classes <= kMaxInt &&
         batch <= kMaxInt &&
         (num_fg == 0 || (cap <= kMaxItems / num_fg && batch <= kMaxInt / num_fg));
}

int ssd_postprocess_workspace_bytes(int64_t batch, int64_t num_priors, int64_t num_classes,
                                    int64_t top_k_per_class, int64_t keep_top_k, bool is_double,
                                    int64_t* bytes) {
  *bytes = 0;
  if (!ssd_postprocess_fits(batch, num_priors, num_classes, top_k_per_class) || keep_top_k < 1) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const Sizes z = sizes_of(batch, num_priors, num_classes, top_k_per_class, keep_top_k);
  *bytes = static_cast<int64_t>(is_double ? carve<double>(nullptr, z).total
                                          : carve<float>(nullptr, z).total);
  return 0;
}

int ssd_postprocess_launch(const void* loc, const void* conf, const void* priors, int64_t batch,
                           int64_t num_priors, int64_t num_classes, bool is_double,
                           double variance_xy, double variance_wh, double score_threshold,
                           double iou_threshold, int64_t top_k_per_class, int64_t keep_top_k,
                           void* workspace, int64_t workspace_bytes, void* out_boxes,
                           void* out_scores, int64_t* out_labels, int64_t* out_counts,
                           void* stream) {
  if (!ssd_postprocess_fits(batch, num_priors, num_classes, top_k_per_class) || keep_top_k < 1) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  if (batch == 0) return 0;
  const Sizes z = sizes_of(batch, num_priors, num_classes, top_k_per_class, keep_top_k);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t err;
  if (is_double) {
    err = run<double>(static_cast<const double*>(loc), static_cast<const double*>(conf),
                      static_cast<const double*>(priors), z, variance_xy, variance_wh,
                      score_threshold, iou_threshold, workspace, workspace_bytes,
                      static_cast<double*>(out_boxes), static_cast<double*>(out_scores),
                      out_labels, out_counts, s);
  } else {
    err = run<float>(static_cast<const float*>(loc), static_cast<const float*>(conf),
                     static_cast<const float*>(priors), z, variance_xy, variance_wh,
                     score_threshold, iou_threshold, workspace, workspace_bytes,
                     static_cast<float*>(out_boxes), static_cast<float*>(out_scores), out_labels,
                     out_counts, s);
  }
  return static_cast<int>(err);
}

}  // namespace cuda
}  // namespace mdssd

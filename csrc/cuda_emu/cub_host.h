// Host implementations of the CUB device-wide algorithms the kernels use, with CUB's semantics:
// SortPairs is a stable LSD radix sort on bits [begin_bit, end_bit) of the key (signed integer
// keys ordered as signed: CUB flips the sign bit); Flagged keeps items whose flag is non-zero, in
// order. The size query returns a plausible temp size; the real call checks it and scribbles over
// the temp storage (as CUB does) so that callers relying on its contents are caught.
#pragma once
#include "cuda_emu.h"

#include <numeric>

namespace cub {

namespace emu_detail {
inline size_t temp_for(size_t n, size_t item_bytes) { return 1024 + 2 * n * item_bytes; }
template <typename K>
inline uint64_t radix_bits(K k, int begin_bit, int end_bit) {
  static_assert(std::is_integral<K>::value || std::is_floating_point<K>::value, "key type");
  uint64_t u = 0;
  std::memcpy(&u, &k, sizeof(K));
  if constexpr (std::is_integral<K>::value && std::is_signed<K>::value) {
    u ^= uint64_t(1) << (sizeof(K) * 8 - 1);
  } else if constexpr (std::is_floating_point<K>::value) {
    const uint64_t sign = uint64_t(1) << (sizeof(K) * 8 - 1);
    const uint64_t all = sizeof(K) == 8 ? ~uint64_t(0) : (sign << 1) - 1;
    u = (u & sign) ? (~u & all) : (u | sign);
  }
  const int width = end_bit - begin_bit;
  const uint64_t m = width >= 64 ? ~uint64_t(0) : ((uint64_t(1) << width) - 1);
  return (u >> begin_bit) & m;
}
inline bool check_temp(void* temp, size_t have, size_t need, const char* file, int line) {
  if (have < need) {
    ::cuda_emu::report(cudaErrorInvalidValue, file, line,
                       "CUB call with temp storage of %zu bytes, fewer than the %zu its size query "
                       "returned", have, need);
    return false;
  }
  std::memset(temp, 0xCD, have);
  return true;
}
}  // namespace emu_detail

struct DeviceRadixSort {
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               const KeyT* d_keys_in, KeyT* d_keys_out, const ValueT* d_values_in,
                               ValueT* d_values_out, NumItemsT num_items, int begin_bit = 0,
                               int end_bit = sizeof(KeyT) * 8, cudaStream_t = nullptr,
                               const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    const size_t n = static_cast<size_t>(num_items);
    const size_t need = emu_detail::temp_for(n, sizeof(KeyT) + sizeof(ValueT));
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = need;
      return cudaSuccess;
    }
    if (!emu_detail::check_temp(d_temp_storage, temp_storage_bytes, need, file, line)) return cudaErrorInvalidValue;
    if (begin_bit < 0 || end_bit > int(sizeof(KeyT) * 8) || begin_bit >= end_bit) {
      ::cuda_emu::report(cudaErrorInvalidValue, file, line, "SortPairs bit range [%d, %d) of a %zu-bit key",
                         begin_bit, end_bit, sizeof(KeyT) * 8);
      return cudaErrorInvalidValue;
    }
    std::vector<size_t> idx(n);
    std::iota(idx.begin(), idx.end(), size_t(0));
    std::vector<uint64_t> bits(n);
    for (size_t i = 0; i < n; ++i) bits[i] = emu_detail::radix_bits(d_keys_in[i], begin_bit, end_bit);
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return bits[a] < bits[b]; });
    std::vector<KeyT> k(n);
    std::vector<ValueT> v(n);
    for (size_t i = 0; i < n; ++i) k[i] = d_keys_in[idx[i]], v[i] = d_values_in[idx[i]];
    std::copy(k.begin(), k.end(), d_keys_out);
    std::copy(v.begin(), v.end(), d_values_out);
    return cudaSuccess;
  }
};

struct DeviceSelect {
  template <typename InputT, typename FlagT, typename OutputT, typename NumSelectedT, typename NumItemsT>
  static cudaError_t Flagged(void* d_temp_storage, size_t& temp_storage_bytes, InputT d_in,
                             FlagT d_flags, OutputT d_out, NumSelectedT d_num_selected_out,
                             NumItemsT num_items, cudaStream_t = nullptr,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    const size_t n = static_cast<size_t>(num_items);
    const size_t need = emu_detail::temp_for(n, 1) / 2;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = need;
      return cudaSuccess;
    }
    if (!emu_detail::check_temp(d_temp_storage, temp_storage_bytes, need, file, line)) return cudaErrorInvalidValue;
    size_t out = 0;
    for (size_t i = 0; i < n; ++i)
      if (d_flags[i]) d_out[out++] = d_in[i];
    *d_num_selected_out = out;
    return cudaSuccess;
  }
};

}  // namespace cub

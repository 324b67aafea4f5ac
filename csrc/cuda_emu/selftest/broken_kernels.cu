// Deliberately broken kernels: each must make the emulator report at the line marked
// `// expect(<case>): <text>` (tests/test_cuda_emu_selftest.py builds this file with the emulator, runs
// every case in its own process and checks the report, its file:line and the launch's error),
// or change its result under a schedule seed. `good_reduce` must run clean.
//
//   broken_kernels <case>      (MDSSD_CUDA_EMU_SEED as for the extension)
#include <cub/device/device_radix_sort.cuh>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

__global__ void divergent_sync(int* out) {
  if (threadIdx.x < 16) __syncthreads();  // expect(divergent_sync): barrier divergence
  out[threadIdx.x] = 1;
}

__global__ void early_exit_then_sync(int* out) {
  if (threadIdx.x >= 40) return;
  __syncthreads();  // expect(early_exit_then_sync): barrier divergence
  out[threadIdx.x] = 1;
}

__global__ void two_barriers(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();  // expect(two_barriers): threads wait at different __syncthreads
  }
  out[threadIdx.x] = 1;
}

__global__ void shfl_with_exited_lanes(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);  // expect(shfl_with_exited_lanes): have exited
  out[threadIdx.x] = v;
}

__global__ void warp_op_vs_barrier(int* out) {
  if (threadIdx.x == 0) {
    out[0] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncthreads();  // expect(warp_op_vs_barrier): deadlock
  }
}

__global__ void lanes_in_different_warp_ops(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 8) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __ballot_sync(0xffffffffu, v > 3);  // expect(lanes_in_different_warp_ops): warp divergence
  }
  out[threadIdx.x] = v;
}

__global__ void shfl_from_lane_outside_mask(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x < 16) v = __shfl_sync(0x0000ffffu, v, 20);  // expect(shfl_from_lane_outside_mask): not in the mask
  out[threadIdx.x] = v;
}

__global__ void misaligned_ldg(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p + 1));  // expect(misaligned_ldg): misaligned __ldg
  out[0] = v.x;
}

__global__ void dynamic_shared_overrun(int* out) {
  extern __shared__ int dyn[];
  dyn[threadIdx.x] = 1;  // launched with 31 ints for 32 threads
  __syncthreads();
  out[threadIdx.x] = dyn[threadIdx.x];
}

// Each thread reads the value its lower neighbour stored, without a barrier: correct when the
// threads run in order (seed 0), wrong when a seed lets a thread run before its neighbour.
__global__ void missing_sync(int* out) {
  __shared__ int s[64];
  s[threadIdx.x] = threadIdx.x + 1;
  out[threadIdx.x] = threadIdx.x == 0 ? 1 : s[threadIdx.x - 1] + 1;
}

// Block b reads what block b - 1 wrote to global memory (an inter-block race: nothing orders
// blocks): correct in block order, wrong under a seed's block order.
__global__ void reads_previous_block(int* data) {
  if (threadIdx.x != 0) return;
  const unsigned b = blockIdx.x;
  data[b] = b == 0 ? 1 : data[b - 1] + 1;
}

__global__ void good_reduce(const int* in, int* out) {
  __shared__ int s[256];
  s[threadIdx.x] = in[blockIdx.x * 256 + threadIdx.x];
  __syncthreads();
  for (int o = 128; o > 0; o >>= 1) {
    if (threadIdx.x < o) s[threadIdx.x] += s[threadIdx.x + o];
    __syncthreads();
  }
  int w = s[0];
  if (threadIdx.x < 32) w += __shfl_xor_sync(0xffffffffu, 0, 1);
  if (threadIdx.x == 0) atomicAdd(out, w);
}

namespace {

int report_and_error(int before) {
  const int err = static_cast<int>(cudaGetLastError());
  std::printf("reports=%d error=%d (%s)\n", cuda_emu::error_count() - before, err,
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  return 0;
}

int run(const char* name) {
  std::vector<int> out(1024, 0);
  std::vector<float> fout(1024, 0), fin(64, 1.0f);
  const int before = cuda_emu::error_count();
  if (!std::strcmp(name, "divergent_sync")) {
    divergent_sync<<<1, 32>>>(out.data());
  } else if (!std::strcmp(name, "early_exit_then_sync")) {
    early_exit_then_sync<<<1, 64>>>(out.data());
  } else if (!std::strcmp(name, "two_barriers")) {
    two_barriers<<<1, 32>>>(out.data());
  } else if (!std::strcmp(name, "shfl_with_exited_lanes")) {
    shfl_with_exited_lanes<<<1, 32>>>(fout.data());
  } else if (!std::strcmp(name, "warp_op_vs_barrier")) {
    warp_op_vs_barrier<<<1, 32>>>(out.data());
  } else if (!std::strcmp(name, "lanes_in_different_warp_ops")) {
    lanes_in_different_warp_ops<<<1, 32>>>(out.data());
  } else if (!std::strcmp(name, "shfl_from_lane_outside_mask")) {
    shfl_from_lane_outside_mask<<<1, 32>>>(out.data());
  } else if (!std::strcmp(name, "misaligned_ldg")) {
    misaligned_ldg<<<1, 1>>>(fin.data(), fout.data());
  } else if (!std::strcmp(name, "too_many_threads")) {
    good_reduce<<<1, 2048>>>(out.data(), out.data());  // expect(too_many_threads): invalid launch configuration
  } else if (!std::strcmp(name, "too_much_dynamic_shared")) {
    dynamic_shared_overrun<<<1, 32, 64 * 1024>>>(out.data());  // expect(too_much_dynamic_shared): more than the 48 KB
  } else if (!std::strcmp(name, "dynamic_shared_overrun")) {
    dynamic_shared_overrun<<<1, 32, 31 * sizeof(int)>>>(out.data());  // expect(dynamic_shared_overrun): past its launched
  } else if (!std::strcmp(name, "cub_temp_too_small")) {
    std::vector<uint32_t> keys(100, 1), keys_out(100);
    std::vector<int64_t> vals(100, 2), vals_out(100);
    size_t need = 0;
    cub::DeviceRadixSort::SortPairs(nullptr, need, keys.data(), keys_out.data(), vals.data(),
                                    vals_out.data(), 100);
    std::vector<unsigned char> temp(need);
    size_t have = need - 1;
    cub::DeviceRadixSort::SortPairs(temp.data(), have, keys.data(), keys_out.data(),  // expect(cub_temp_too_small): temp storage
                                    vals.data(), vals_out.data(), 100);
  } else if (!std::strcmp(name, "missing_sync")) {
    missing_sync<<<1, 64>>>(out.data());
    int wrong = 0;
    for (int t = 0; t < 64; ++t) wrong += out[t] != t + 1;
    std::printf("wrong=%d\n", wrong);
  } else if (!std::strcmp(name, "reads_previous_block")) {
    reads_previous_block<<<64, 32>>>(out.data());
    int wrong = 0;
    for (int b = 0; b < 64; ++b) wrong += out[b] != b + 1;
    std::printf("wrong=%d\n", wrong);
  } else if (!std::strcmp(name, "good_reduce")) {
    std::vector<int> in(256 * 40, 1);
    int sum = 0;
    good_reduce<<<40, 256>>>(in.data(), &sum);
    std::printf("wrong=%d\n", sum != 256 * 40);
  } else {
    std::fprintf(stderr, "unknown case %s\n", name);
    return 2;
  }
  return report_and_error(before);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <case>\n", argv[0]);
    return 2;
  }
  return run(argv[1]);
}

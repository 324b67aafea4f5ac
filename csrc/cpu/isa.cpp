#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>

namespace mdssd {
namespace {

Isa detect() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kSse2;
}

Isa decide() {
  const Isa best = detect();
  const char* want = std::getenv("MDSSD_CPU_ISA");
  if (!want || !*want) return best;
  Isa cap = best;
  if (!std::strcmp(want, "sse2")) cap = Isa::kSse2;
  else if (!std::strcmp(want, "avx2")) cap = Isa::kAvx2;
  else if (!std::strcmp(want, "avx512")) cap = Isa::kAvx512;
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = decide();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "sse2";
  }
}

}  // namespace mdssd

// Instruction sets of the x86 CPU kernels that are compiled more than once.
//
// The extension is built for the baseline x86-64 (SSE2) so that it runs everywhere; a kernel
// whose loops gain from wider vectors (l2norm_sum: 4 floats per SSE2 register, 8 per AVX2, 16 per
// AVX-512) is compiled once per instruction set in one file, under `#pragma GCC target` (see
// l2norm_sum.cpp), and picks its variant at run time with cpu_isa(). Every variant does the same
// arithmetic in the same order (-ffp-contract=off, fixed summation lanes), so results are bitwise
// equal whichever runs: MDSSD_CPU_ISA=sse2|avx2|avx512 forces one (tests compare them).
#pragma once

namespace mdssd {

enum class Isa { kSse2 = 0, kAvx2 = 1, kAvx512 = 2 };

// The widest instruction set this CPU (and OS) supports, capped by MDSSD_CPU_ISA when set;
// decided once per process.
Isa cpu_isa();

const char* isa_name(Isa isa);

}  // namespace mdssd

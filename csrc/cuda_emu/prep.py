#!/usr/bin/env python3
"""Rewrites a .cu file into C++ that the host compiler builds against cuda_emu.h, keeping line
numbers (the output starts with `#include "cuda_emu/cuda_emu.h"` and a `#line 1 "<the .cu>"`, so
diagnostics, __FILE__ and compiler errors name the original file and line).

Three rewrites, the first two the only constructs of the kernel sources that are not C++ with macros:
  * `kernel<<<grid, block[, shmem[, stream]]>>>(args)`
        -> `::cuda_emu::launch_impl(kernel, "kernel", __FILE__, __LINE__, grid, block, shmem, stream)(args)`
  * `extern __shared__ [__align__(n)] T name[];`
        -> `T* name = reinterpret_cast<T*>(::cuda_emu::dynamic_shared());`
  * `__shared__ T name[...];` gets `CUDA_EMU_SHARED(name);` appended on the same line
Used by setup.py (MDSSD_CUDA_EMU=1); by hand: python csrc/cuda_emu/prep.py in.cu out.cpp
"""
import re
import sys


def kernel_start(src: str, end: int) -> int:
    """Start of the callee expression ending just before src[end] (identifier, ::, <...>)."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    while True:
        if i > 0 and src[i - 1] == '>':  # template arguments: skip a balanced <...>
            depth = 0
            while i > 0:
                i -= 1
                if src[i] == '>':
                    depth += 1
                elif src[i] == '<':
                    depth -= 1
                    if depth == 0:
                        break
            while i > 0 and src[i - 1].isspace():
                i -= 1
        j = i
        while j > 0 and (src[j - 1].isalnum() or src[j - 1] == '_'):
            j -= 1
        if j == i:
            raise SystemExit(f"cannot find the kernel before offset {end}")
        i = j
        if src[i - 2:i] == '::':
            i -= 2
            continue
        return i


def rewrite(src: str) -> tuple[str, int, int]:
    launches = 0
    out = []
    pos = 0
    while True:
        k = src.find('<<<', pos)
        if k < 0:
            break
        start = kernel_start(src, k)
        close = src.find('>>>', k)
        cfg = src[k + 3:close]
        kernel = src[start:k]
        name = ' '.join(kernel.split())
        out.append(src[pos:start])
        # keep the newlines of the kernel expression so that line numbers do not move
        emitted = f'::cuda_emu::launch_impl({kernel.rstrip()}, "{name}", __FILE__, __LINE__, {cfg})'
        out.append(emitted + '\n' * (src[start:close + 3].count('\n') - emitted.count('\n')))
        pos = close + 3
        launches += 1
    out.append(src[pos:])
    src = ''.join(out)
    pat = re.compile(r'extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:\s]*?)\s+(\w+)\s*\[\s*\]\s*;')
    src, shared = pat.subn(
        lambda m: f'{m.group(1)}* {m.group(2)} = reinterpret_cast<{m.group(1)}*>(::cuda_emu::dynamic_shared());',
        src)
    # Static shared variables: registered after their declaration (same line) so that the
    # emulator refills them with garbage before every block (see CUDA_EMU_SHARED).
    static = re.compile(r'^(\s*__shared__\s+[^;]*?\b(\w+)\s*(?:\[[^\]]*\]\s*)*;)', re.M)
    src, _ = static.subn(lambda m: f'{m.group(1)} CUDA_EMU_SHARED({m.group(2)});', src)
    return src, launches, shared


def prepare(src_path: str, out_path: str, shown_path: str | None = None) -> tuple[int, int]:
    """Writes the emulator's C++ for src_path to out_path (only if it changed, so that rebuilds
    recompile only what changed); returns (launches, dynamic shared declarations) rewritten."""
    with open(src_path) as f:
        out, launches, shared = rewrite(f.read())
    text = f'#include "cuda_emu/cuda_emu.h"\n#line 1 "{shown_path or src_path}"\n{out}'
    try:
        with open(out_path) as f:
            if f.read() == text:
                return launches, shared
    except OSError:
        pass
    with open(out_path, 'w') as f:
        f.write(text)
    return launches, shared


def main():
    launches, shared = prepare(sys.argv[1], sys.argv[2])
    print(f"{sys.argv[1]}: {launches} launches, {shared} dynamic shared declarations rewritten",
          file=sys.stderr)


if __name__ == '__main__':
    main()

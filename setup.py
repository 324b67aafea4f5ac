"""Builds the `mdssd._C` extension: C++ CPU kernels always, CUDA kernels when possible.

MDSSD_CUDA=1 forces a CUDA build (fails if torch has no CUDA or nvcc is missing), MDSSD_CUDA=0
forces a CPU-only build; unset, CUDA is built when torch has CUDA and nvcc is found.

MDSSD_CUDA_EMU=1 builds the emulated-CUDA extension instead (docs/cuda_emu.md): the CPU kernels,
plus csrc/cuda/*.cu compiled unchanged by the host compiler against csrc/cuda_emu/ and the real
CUDA glue, on the torch device "cuda_emu". It needs the CUDA toolkit's headers (not nvcc, a GPU
or a CUDA torch). MDSSD_CUDA_EMU_SANITIZE=1 adds AddressSanitizer and UBSan to that build.
"""

import glob
import os
import site
import sys
import sysconfig

from setuptools import find_packages, setup


def import_installed_torch():
    """Imports the torch the extension will run with.

    The ops link against torch's C++ ABI, so they must be built against the torch that is installed
    where mdssd will be used, never against another copy. Plain `pip install -e .` builds in an
    isolated environment that hides site-packages (and pyproject.toml deliberately does not list
    torch as a build requirement, which would pull a different, multi-GB CUDA build into it): there
    the installed torch is found in this interpreter's own site-packages (a venv's, and the base
    ones a venv may see), which isolation hides from sys.path but not from sysconfig and site.
    """
    try:
        import torch
    except ImportError:
        paths = [sysconfig.get_paths()[key] for key in ("platlib", "purelib")]
        paths += site.getsitepackages() if hasattr(site, "getsitepackages") else []
        for path in paths:
            if os.path.isdir(os.path.join(path, "torch")) and path not in sys.path:
                sys.path.append(path)
        try:
            import torch
        except ImportError:
            sys.exit(
                "mdssd: torch is not installed: install it first (`pip install torch`, CPU builds at "
                "https://download.pytorch.org/whl/cpu), then run `pip install -e .` again"
            )
    return torch


torch = import_installed_torch()
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda() -> bool:
    choice = os.environ.get("MDSSD_CUDA", "").strip()
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if choice == "0":
        return False
    if choice == "1":
        if not possible:
            raise RuntimeError(
                "MDSSD_CUDA=1 but a CUDA build is impossible: "
                f"torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME}"
            )
        return True
    return possible


def default_cuda_archs() -> None:
    """Without a visible GPU (a build machine, CI) torch cannot guess the architecture and fails
    deep inside its flag detection: build for A100 and H100-class GPUs plus PTX for newer ones
    instead. TORCH_CUDA_ARCH_LIST, when set, always wins."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        print("mdssd: no GPU visible, building CUDA kernels for TORCH_CUDA_ARCH_LIST=8.0;9.0+PTX")


def want_cuda_emu() -> bool:
    choice = os.environ.get("MDSSD_CUDA_EMU", "").strip()
    if choice not in ("", "0", "1"):
        raise RuntimeError(f"MDSSD_CUDA_EMU must be 0 or 1, got {choice!r}")
    return choice == "1"


def cuda_emu_extension(sources, cxx, args):
    """The CPU kernels plus the CUDA kernels and glue on the emulator (csrc/cuda_emu/)."""
    headers = os.path.join(CUDA_HOME or "/usr/local/cuda", "include")
    if not os.path.isfile(os.path.join(headers, "cuda_runtime_api.h")):
        raise RuntimeError(
            "MDSSD_CUDA_EMU=1 needs the CUDA toolkit's headers (cuda_runtime_api.h, vector_types.h, "
            f"cuda_fp16.h, cuda_bf16.h; no GPU or nvcc needed): not found in {headers}. "
            "Set CUDA_HOME to a toolkit."
        )
    sys.path.insert(0, os.path.abspath("csrc/cuda_emu"))
    from prep import prepare  # the .cu -> C++ rewrite (launch syntax, extern __shared__)

    generated = os.path.join("build", "cuda_emu_src")
    os.makedirs(generated, exist_ok=True)
    for cu in sorted(glob.glob("csrc/cuda/*.cu")):
        out = os.path.join(generated, os.path.basename(cu)[: -len(".cu")] + "_emu.cpp")
        prepare(cu, out)
        sources.append(out)
    glue = [f for f in sorted(glob.glob("csrc/cuda/*.cpp")) if not f.endswith("cuda_stream.cpp")]
    sources += glue + ["csrc/cuda_emu/device.cpp", "csrc/cuda_emu/stream.cpp"]
    cxx = [*cxx, "-Wno-unknown-pragmas"]
    link = list(args.pop("extra_link_args"))
    if os.environ.get("MDSSD_CUDA_EMU_SANITIZE", "").strip() == "1":
        # vptr is off: it checks torch's classes across libraries and reports false positives.
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=all",
                    "-fno-omit-frame-pointer", "-g"]
        cxx += [*sanitize, "-O1"]  # -O1: a quicker build, and ASan reports keep their frames
        link += sanitize
    # csrc/cuda_emu/include comes first: its cuda_runtime.h and cub/ headers shadow the toolkit's.
    args["include_dirs"] = [
        os.path.abspath("csrc/cuda_emu/include"), *args["include_dirs"], os.path.abspath(headers)
    ]
    return CppExtension(
        sources=sources,
        define_macros=[("MDSSD_WITH_CUDA", None), ("MDSSD_CUDA_EMU", None)],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
        **args,
    )


def extension():
    sources = ["csrc/mdssd.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # -fopenmp: at::parallel_for only goes parallel when compiled with OpenMP.
    # -ffp-contract=off: no fused multiply-adds, so the box arithmetic rounds exactly like the
    # reference and the CUDA kernels whatever -march a user adds (see csrc/box_math.h).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off"]
    args = dict(
        name="mdssd._C",
        include_dirs=[os.path.abspath("csrc")],
        extra_link_args=["-fopenmp"],
    )
    if want_cuda_emu():
        return cuda_emu_extension(sources, cxx, args)
    if want_cuda():
        default_cuda_archs()
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            sources=sources,
            define_macros=[("MDSSD_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **args,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **args)


setup(
    packages=find_packages(include=["mdssd", "mdssd.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)

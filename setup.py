"""Builds the `mdssd._C` extension: C++ CPU kernels always, CUDA kernels when possible.

MDSSD_CUDA=1 forces a CUDA build (fails if torch has no CUDA or nvcc is missing), MDSSD_CUDA=0
forces a CPU-only build; unset, CUDA is built when torch has CUDA and nvcc is found.
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch


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
    if want_cuda():
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

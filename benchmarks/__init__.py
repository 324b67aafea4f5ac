"""Benchmarks of mdssd: kernel microbenchmarks (``python -m benchmarks.kernels``) and end-to-end
training/inference/data throughput (``python -m benchmarks.end_to_end``). See README.md here."""

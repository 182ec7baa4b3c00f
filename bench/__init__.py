"""Benchmarks of ComfyUI-LD3 (not tests): bench/run.py on the CPU, bench/gpu.py on a GPU; see BENCHMARKS.md."""

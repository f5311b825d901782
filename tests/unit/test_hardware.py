from __future__ import annotations

from pathlib import Path

from services.hardware import cpu_computes_bf16


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_computes_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 amx_bf16 amx_tile\n")
    assert cpu_computes_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert not cpu_computes_bf16(cpuinfo)
    assert not cpu_computes_bf16(tmp_path / "no-such-file")

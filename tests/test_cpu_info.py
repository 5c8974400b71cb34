"""The CPU line the demo's report, demo.json and bench/demo_speed.py print beside their times."""

from __future__ import annotations

from pneumoscope import runtime


def test_cpu_isa_reads_the_flags(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "sse4_2"}))
    assert runtime.cpu_isa() == {"avx2": True, "avx512": True, "avx512_bf16": True, "amx": False}
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2"}))
    assert runtime.cpu_isa() == {"avx2": True, "avx512": False, "avx512_bf16": False, "amx": False}
    assert not runtime.cpu_has_fast_bf16()


def test_cpu_summary_names_the_model_flags_and_an_isa_cap(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(runtime, "cpu_model", lambda: "Some CPU")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    line = runtime.cpu_summary()
    assert line.startswith("Some CPU, ") and "cores, avx2 (no avx512, avx512_bf16, amx)" in line
    assert "capped" not in line
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtime.cpu_summary().endswith("; oneDNN capped at AVX2")

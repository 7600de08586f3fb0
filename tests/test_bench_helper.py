"""benchmarks/_bench.py: sections of BENCHMARKS.md are replaced in place, others left alone."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from _bench import cap_prefix, machine_info, write_section  # noqa: E402


def test_write_section_creates_replaces_and_keeps_others(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    write_section("a", "first A", md)
    write_section("b", "only B", md)
    write_section("a", "second A\nwith $1 \\1 backrefs", md)
    text = md.read_text()
    assert text.startswith("# Benchmarks")
    assert "second A\nwith $1 \\1 backrefs" in text and "first A" not in text
    assert text.count("<!-- BEGIN a -->") == 1 and "only B" in text
    assert text.index("<!-- BEGIN a -->") < text.index("<!-- BEGIN b -->")
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"]


def test_machine_info_fields():
    info = machine_info()
    assert {"cpu", "cores", "torch", "device"} <= set(info)


def test_machine_info_names_an_isa_cap(monkeypatch):
    # A run with the kernels capped must not pass for a run on a CPU that has only the capped ISA.
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(var, raising=False)
    assert "capped" not in machine_info()["isa"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "kernels capped" in machine_info()["isa"] and "ONEDNN_MAX_CPU_ISA=AVX2" in machine_info()["isa"]
    assert cap_prefix() == "ONEDNN_MAX_CPU_ISA=AVX2 "  # the section's command reruns with the cap

"""The speed benchmark runs end to end at a tiny size and writes the JSON it documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from h3lab import bench


def test_bench_main_writes_json_with_every_documented_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--lengths", "64", "--contexts", "16,32", "--repeat", "1", "--gen-steps", "3"]
    assert bench.main([*argv, "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert set(report) == {"meta", "train", "generation", "reference", "goals"}
    meta_keys = {"device", "threads", "torch", "batch", "d_model", "memory", "load_avg_1min"}
    assert meta_keys <= set(report["meta"])
    (row,) = report["train"]
    assert row["L"] == 64
    for key in ("h3_ms", "attn_ms", "h3_peak_mib", "attn_peak_mib"):
        assert isinstance(row[key], float) and row[key] >= 0, key
    assert {"ref_h3_ms", "goal_h3_ms", "speedup_vs_ref", "h3_faster_than_attn"} <= set(row)
    assert [g["context"] for g in report["generation"]] == [16, 32]
    for g in report["generation"]:
        assert g["h3_ms_per_token"] > 0 and g["attn_ms_per_token"] > 0
    assert set(report["goals"]) == {
        "speed_3x_ref_from_1k",
        "h3_faster_than_attn_from_2k",
        "peak_16k_within_1_5_gib",
        "step_within_0_2_ms",
        "step_flat_in_context",
    }
    assert "H3 step" in capsys.readouterr().out  # the table was printed


def test_bench_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--lengths", "--contexts", "--threads", "--device", "--out", "--repeat"):
        assert flag in text


def test_lengths_accept_k_suffixes() -> None:
    assert bench._ints("256,1k,16K") == [256, 1024, 16384]

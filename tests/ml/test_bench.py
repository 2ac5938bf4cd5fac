"""The speed benchmark runs end to end at a tiny size and writes the JSON it documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from h3lab import bench


@pytest.mark.slow
def test_bench_times_every_contender_side_by_side_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--lengths", "64", "--rounds", "2", "--contexts", "16,32", "--gen-steps", "5"]
    argv += ["--d-model", "32", "--batch", "2", "--contenders", ",".join(bench.CONTENDERS)]
    assert bench.main([*argv, "--threads", "2", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert set(report) == {"meta", "train", "generation", "goals", "goal_notes"}
    meta = report["meta"]
    assert {"load_avg_1min_start", "load_avg_1min_end", "memory", "flops", "fft_lengths"} <= set(
        meta
    )
    (row,) = report["train"]
    assert row["L"] == 64 and len(row["load_avg_1min"]) == 2
    for kind in bench.CONTENDERS:
        c = row[kind]
        assert len(c["ms_all"]) == 2  # one pass per round
        assert 0 < c["ms_min"] <= c["ms"]
        assert c["gflops"] > 0 and c["matmul_share"] > 0
        assert c["cpu_ms_1thread"] > 0 and c["cpu_ratio"] > 0
        if kind != "matmul":
            # the pass's own growth over its start (at these sizes the warm-up's freed blocks
            # may hold the whole pass, so it can be 0, never negative)
            assert c["peak_mib"] >= 0
        if kind != "h3":
            assert c["x_vs_h3"] > 0
    assert row["matmul"]["matmul_share"] == 1.0
    # The stored-figure columns are gone: every ratio is between contenders of this run.
    assert not any("ref_h3" in key for key in json.dumps(report).split('"'))
    assert [g["context"] for g in report["generation"]] == [16, 32]
    for g in report["generation"]:
        assert g["h3_ms_per_token"] > 0 and g["attn_ms_per_token"] > 0
    assert report["goals"]["h3_6x_ref_1k_to_16k"] is None  # L = 64 is outside 1k-16k
    assert isinstance(report["goals"]["hd8_within_1_5x_of_hd1"], bool)
    # Every measured goal is printed with its value against the goal.
    notes = report["goal_notes"]
    assert "h3_6x_ref_1k_to_16k" not in notes
    assert notes["hd8_within_1_5x_of_hd1"].startswith("max ")
    assert "goal ≤ 1.5×" in notes["hd8_within_1_5x_of_hd1"]
    assert (
        "after 16 tokens" in notes["step_within_0_1_ms"]
        or "after 32" in notes["step_within_0_1_ms"]
    )
    text = capsys.readouterr().out
    assert "× h3" in text and "Goals" in text


def test_bench_can_skip_memory_and_the_single_thread_pass(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    argv = ["--lengths", "32", "--rounds", "1", "--contexts", "0", "--contenders", "h3,ref"]
    argv += ["--d-model", "16", "--batch", "1", "--no-memory", "--no-single-thread"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["train"]
    assert set(row) == {"L", "load_avg_1min", "h3", "ref"}
    assert "peak_mib" not in row["h3"] and "cpu_ratio" not in row["h3"]
    assert report["generation"] == []


def test_fft_size_mode_compares_the_picked_length_with_its_neighbours(tmp_path: Path) -> None:
    out = tmp_path / "fft.json"
    assert bench.main(["--fft-sizes", "--lengths", "1k", "--rounds", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["fft_sizes"]
    assert [(r["L"], r["need"], r["chosen"]) for r in rows] == [
        (1024, 1087, 1152),
        (1024, 2047, 2048),
    ]
    for r in rows:
        assert r["chosen_vs_fastest"] >= 1.0 and r["smallest_vs_fastest"] >= 1.0


def test_nominal_flops_count_the_projections_and_the_ffts() -> None:
    shape = bench.Shape()
    # The 16k figure the method text quotes: ≈ 115 GFLOP, 89 % of it in the projections.
    total = bench.nominal_flops("h3", shape, 16384)
    assert 115e9 < total < 116.5e9
    assert 24 * 4 * 16384 * 256**2 / total == pytest.approx(0.89, abs=0.005)
    assert bench.nominal_flops("h3_hd8", shape, 16384) > total


def test_bench_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--lengths", "--contenders", "--rounds", "--threads", "--out", "--fft-sizes"):
        assert flag in text


def test_lengths_accept_k_suffixes() -> None:
    assert bench._ints("256,1k,16K") == [256, 1024, 16384]


def test_unknown_contender_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown contender"):
        bench.main(["--contenders", "h3,rnn"])


def _row(L: int, **ms: float) -> dict[str, object]:
    """A train row as time_length writes it, from median ms per contender."""
    row: dict[str, object] = {"L": L}
    for k, v in ms.items():
        row[k] = {"ms": v, "ms_min": v, "x_vs_h3": v / ms["h3"]} if k != "h3" else {"ms": v}
    return row


def test_a_missed_speedup_goal_says_what_the_projections_leave_for_the_mixing() -> None:
    # ref 300, h3 60 (5×), projections 30: free mixing would give 10×; 6× needs the mixing
    # within 300/6 − 30 = 20 ms, and it takes 30.
    train = [_row(1024, h3=60.0, ref=300.0, proj=30.0), _row(4096, h3=100.0, ref=900.0, proj=40)]
    assert bench.goals(train, [])["h3_6x_ref_1k_to_16k"] is False
    note = bench.goal_notes(train, [])["h3_6x_ref_1k_to_16k"]
    assert note.startswith("min 5.00× at L=1024 (goal ≥ 6×)")
    assert "30.0 of h3's 60.0 ms (50 %)" in note and "ref/proj = 10.00×" in note
    assert "within 20.0 ms, it takes 30.0" in note


def test_a_met_goal_carries_its_value_and_no_reason() -> None:
    train = [_row(1024, h3=40.0, ref=300.0, proj=30.0)]
    assert bench.goals(train, [])["h3_6x_ref_1k_to_16k"] is True
    note = bench.goal_notes(train, [])["h3_6x_ref_1k_to_16k"]
    assert note == "min 7.50× at L=1024 (goal ≥ 6×)"


def test_an_unsteady_matmul_anchor_is_flagged_beside_the_share_it_flatters() -> None:
    row = _row(16384, h3=2000.0, proj=800.0)
    row["h3"]["matmul_share"] = 0.56  # type: ignore[index]
    row["matmul"] = {"ms": 300.0, "ms_min": 200.0, "gflops": 83.0}
    note = bench.goal_notes([row], [])["h3_half_of_matmul_at_16k"]
    assert note.startswith("56 % of the matmul's 83 GFLOP/s (goal ≥ 50 %)")
    assert "1.50× its best round" in note and "why" not in note

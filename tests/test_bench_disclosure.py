"""The crypto and visibility benchmark commands run end to end at tiny sizes and write the
side-by-side reports docs/benchmarks.md quotes. Not timed tests: they check the shape, that
every contender ran against its anchor in the same run, and what must hold whatever the load
(memory flat, two queries, guardian and h3lab answering with the same set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_bench_crypto_alternates_contenders_with_raw_aes_gcm(tmp_path: Path) -> None:
    out = tmp_path / "crypto.json"
    call_command(
        "bench_crypto",
        "--size-mb=16",  # the small file (a quarter) still fills a mapping window
        "--rounds=3",
        "--profile",
        f"--out={out}",
        f"--tmp={tmp_path}",
    )
    report = json.loads(out.read_text())
    assert len(report["load_before"]) == len(report["load_after"]) == 3
    assert set(report["contenders"]) == {
        "raw_encrypt",
        "encrypt",
        "raw_decrypt",
        "decrypt",
        "download",
    }
    for c in report["contenders"].values():
        assert c["bytes"] == 16 << 20
        assert 0 < c["min_s"] <= c["median_s"]
        assert c["best_gbps"] >= c["median_gbps"] > 0
    assert {op: r["anchor"] for op, r in report["ratios"].items()} == {
        "encrypt": "raw_encrypt",
        "decrypt": "raw_decrypt",
        "download": "raw_decrypt",
    }
    for r in report["ratios"].values():
        assert len(r["per_round"]) == 3
        assert r["min"] <= r["median"] <= r["max"]
    assert report["ratios"]["decrypt"]["goal"] == 0.85
    assert report["ratios"]["download"]["goal"] == 0.80
    assert report["memory"]["sizes_bytes"] == {"large": 16 << 20, "small": 4 << 20}
    for op in ("encrypt", "decrypt", "download"):
        m = report["memory"][op]
        assert m["flat"], m
        assert 0 <= m["large"]["growth_mib"] < 16  # a few chunk buffers and one mapping window
    assert any("decrypt" in row for row in report["profiles"]["decrypt"])


def test_bench_visibility_alternates_h3lab_and_guardian(tmp_path: Path) -> None:
    out = tmp_path / "visibility.json"
    call_command(
        "bench_visibility", "--backends=sqlite", "--findings=300", "--reps=3", f"--out={out}"
    )
    report = json.loads(out.read_text())
    assert report["repetitions"] == 3
    assert report["goal_p95_ms"] == 10.0
    (result,) = report["results"]
    assert result["backend"] == "sqlite" and result["findings"] == 300
    assert result["server_side_binding"] is False  # SQLite has none
    assert len(result["load_before"]) == len(result["load_after"]) == 3
    assert len(result["personas"]) == 10
    for persona, m in result["personas"].items():
        assert m["queries"] == 2, persona  # h3lab: capped count + page
        assert m["guardian"]["queries"] >= 2, persona
        assert m["rows"] == m["guardian"]["rows"] == min(50, m["visible"]), persona
        for t in (m["total_ms"], m["guardian"]["total_ms"], m["alone_total_ms"]):
            assert 0 < t["min"] <= t["median"] <= t["p95"]


def test_bench_visibility_refuses_a_database_that_is_not_scratch(tmp_path: Path) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="h3lab_bench"):
        call_command(
            "bench_visibility", "--backends=postgresql", "--scratch-db=h3lab", f"--out={tmp_path}/x"
        )

"""``manage.py bench_crypto``: streamed AES-256-GCM throughput and peak memory vs raw AES-GCM."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

CHILD = r"""
import io, json, os, sys, time
sys.path.insert(0, {root!r})
from vault import crypto
mode, src, dst, key_hex = sys.argv[1:5]
chunk = int(sys.argv[5])
key = bytes.fromhex(key_hex)
def hwm_kib():
    # VmHWM (peak RSS) of this process image: unlike ru_maxrss it is not inherited across
    # exec from the (much larger) Django parent.
    with open("/proc/self/status") as st:
        return next(int(l.split()[1]) for l in st if l.startswith("VmHWM"))
before = hwm_kib()
t = time.perf_counter()
with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as out:
    if mode == "enc":
        crypto.encrypt_file(key, f, out, chunk_size=chunk)
    elif mode == "dec":
        crypto.decrypt_file(key, f, out)  # reused buffers, no per-chunk allocation
    else:
        for piece in crypto.decrypt_stream(key, f):  # one bytes copy per chunk (download view)
            out.write(piece)
elapsed = time.perf_counter() - t
peak = hwm_kib()
print(json.dumps({{"elapsed_s": elapsed, "peak_rss_mib": peak / 1024,
                  "baseline_rss_mib": before / 1024}}))
"""


def _raw_aes(size: int, buffer: int, repeat: int) -> float:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    data = os.urandom(buffer)
    nonce = os.urandom(12)
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(size // buffer):
            aead.encrypt(nonce, data, None)
        rates.append(size / (time.perf_counter() - t))
    return statistics.median(rates)


class Command(BaseCommand):
    @staticmethod
    def _run(mode: str, script: str, src: Path, dst: Path, key: str, chunk: int) -> Any:
        out = subprocess.run(
            [sys.executable, "-c", script, mode, str(src), str(dst), key, str(chunk)],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout)

    help = (
        "Measure streamed AES-256-GCM encryption/decryption of an artifact file (throughput and "
        "peak memory in a fresh process) beside raw AES-256-GCM from `cryptography`. Prints a "
        "table and writes JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--size-mb", type=int, default=1024, help="artifact size (default 1024)"
        )
        parser.add_argument("--chunk-kb", type=int, default=1024, help="chunk size (default 1024)")
        parser.add_argument("--repeat", type=int, default=3, help="repetitions, median reported")
        parser.add_argument("--out", default="out/bench_crypto.json", help="JSON output path")
        parser.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")

    def handle(self, *args: Any, **opts: Any) -> None:
        size = opts["size_mb"] << 20
        chunk = opts["chunk_kb"] << 10
        root = str(Path(__file__).resolve().parents[3])
        raw = _raw_aes(size, 16 << 20, opts["repeat"])
        results: dict[str, Any] = {"size_bytes": size, "chunk_bytes": chunk, "raw_gbps": raw / 1e9}
        with tempfile.TemporaryDirectory(dir=opts["tmp"]) as tmp:
            plain, enc, dec = Path(tmp, "plain"), Path(tmp, "enc"), Path(tmp, "dec")
            with plain.open("wb") as f:
                for _ in range(size // (64 << 20) or 1):
                    f.write(os.urandom(min(size, 64 << 20)))
            key = os.urandom(32).hex()
            script = CHILD.format(root=root)
            # Crypto throughput is measured into /dev/null from a page-cached source, so the
            # disk's write speed does not hide it; file→file rows show the end-to-end cost.
            jobs = (
                ("enc", "enc", plain, Path(os.devnull)),
                ("dec", "dec", enc, Path(os.devnull)),
                ("dec_stream", "decs", enc, Path(os.devnull)),
                ("enc_file", "enc", plain, enc),
                ("dec_file", "dec", enc, dec),
            )
            self._run("enc", script, plain, enc, key, chunk)  # produce the ciphertext once
            for label, mode, src, dst in jobs:
                runs = [
                    self._run(mode, script, src, dst, key, chunk) for _ in range(opts["repeat"])
                ]
                elapsed = statistics.median(r["elapsed_s"] for r in runs)
                results[label] = {
                    "gbps": size / elapsed / 1e9,
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    "baseline_rss_mib": min(r["baseline_rss_mib"] for r in runs),
                }
            identical = plain.read_bytes() == dec.read_bytes() if size <= 1 << 30 else None
        results["round_trip_identical"] = identical
        labels = {
            "enc": "encrypt → /dev/null",
            "dec": "decrypt → /dev/null",
            "dec_stream": "decrypt_stream → null",
            "enc_file": "encrypt file → file",
            "dec_file": "decrypt file → file",
        }
        for mode in labels:
            results[mode]["fraction_of_raw"] = results[mode]["gbps"] / results["raw_gbps"]
        w = self.stdout.write
        w(f"streamed AES-256-GCM, {opts['size_mb']} MiB file, {opts['chunk_kb']} KiB chunks")
        w(f"{'':<22}{'GB/s':>8}{'of raw':>9}{'peak RSS MiB':>14}{'(baseline)':>12}")
        w(f"{'raw AESGCM (16 MiB)':<22}{results['raw_gbps']:>8.2f}{'100%':>9}{'':>14}{'':>12}")
        for mode, label in labels.items():
            r = results[mode]
            w(
                f"{label:<22}{r['gbps']:>8.2f}{r['fraction_of_raw']:>9.0%}"
                f"{r['peak_rss_mib']:>14.1f}{r['baseline_rss_mib']:>12.1f}"
            )
        w("goal: ≥ 70% of raw throughput; peak memory independent of file size")
        Path(opts["out"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["out"]).write_text(json.dumps(results, indent=2))
        w(f"wrote {opts['out']}")

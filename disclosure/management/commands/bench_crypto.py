"""``manage.py bench_crypto``: streamed AES-256-GCM beside raw AES-GCM, alternated in one process.

Contenders, all over the same 1 MiB chunks and timed round after round in a rotating order so
that load drifts hit them alike:

- ``raw_encrypt`` / ``raw_decrypt``: ``cryptography``'s ``AESGCM.encrypt`` / ``decrypt`` on the
  file's chunks already in memory (the anchor: the cipher and nothing else);
- ``encrypt``: ``vault.crypto.encrypt_file`` from the page-cached plaintext file to /dev/null;
- ``decrypt``: ``vault.crypto.decrypt_file`` from the page-cached ciphertext to /dev/null;
- ``download``: what an artifact download view streams: the stored file opened through the
  storage (``open_stream``), ``decrypt_stream``, wrapped in the download response
  (``stream_file``) and iterated as a WSGI server would.

Each round gives a ratio per h3lab contender against its raw anchor; the report holds median
and best per contender, the ratios per round and their median, the load average before and
after, and the peak memory growth of each operation in a fresh process at two file sizes (it
must not grow with the file). Prints a table and writes JSON.
"""

from __future__ import annotations

import cProfile
import hashlib
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

RAW_POOL = 64 << 20  # raw contenders cycle over this many bytes of the file's chunks
GOALS = {"decrypt": 0.85, "download": 0.80}
ANCHOR = {"encrypt": "raw_encrypt", "decrypt": "raw_decrypt", "download": "raw_decrypt"}

# Peak memory of one operation in a fresh process: VmHWM is reset (clear_refs 5) once Python,
# Django and the crypto are loaded, so the growth is the operation's own.
CHILD = r"""
import json, os, sys, hashlib
import django
django.setup()
from disclosure.management.commands.bench_crypto import operation
op, plain, enc, key_hex, chunk = sys.argv[1:6]
run = operation(op, plain, enc, bytes.fromhex(key_hex), int(chunk))
def status(field):
    with open("/proc/self/status") as st:
        return next(int(l.split()[1]) for l in st if l.startswith(field + ":"))
try:
    with open("/proc/self/clear_refs", "w") as cr:
        cr.write("5")
except OSError:
    pass
before = status("VmRSS")
run()
peak = status("VmHWM")
print(json.dumps({"growth_mib": (peak - before) / 1024, "rss_before_mib": before / 1024}))
"""


def operation(op: str, plain: str, enc: str, key: bytes, chunk: int) -> Callable[[], None]:
    """The h3lab contender ``op`` over the files ``plain`` / ``enc``, as a callable."""
    from django.core.files.storage import FileSystemStorage

    from experiments.downloads import stream_file
    from experiments.storage_backends import open_stream
    from vault import crypto

    def encrypt() -> None:
        with open(plain, "rb", buffering=0) as f, open(os.devnull, "wb", buffering=0) as out:
            crypto.encrypt_file(key, f, out, chunk_size=chunk)

    def decrypt() -> None:
        with open(enc, "rb", buffering=0) as f, open(os.devnull, "wb", buffering=0) as out:
            crypto.decrypt_file(key, f, out)

    storage = FileSystemStorage(location=os.path.dirname(enc))

    def download() -> None:
        with open_stream(storage, os.path.basename(enc)) as f:
            response = stream_file(
                crypto.decrypt_stream(key, f),
                filename="model.pt",
                content_type="application/octet-stream",
                size=0,
                sha256="",
            )
            for _ in response:  # what the WSGI server does with each chunk: send it
                pass

    return {"encrypt": encrypt, "decrypt": decrypt, "download": download}[op]


def _raw(
    op: str, chunks: list[bytes], nonces: list[bytes], header: bytes, key: bytes, size: int
) -> tuple[Callable[[], None], int]:
    """Raw AES-GCM over chunks already in memory, repeated to about ``size`` bytes."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(key)
    fn = aead.encrypt if op == "raw_encrypt" else aead.decrypt
    count = len(chunks)
    tag = 0 if op == "raw_encrypt" else 16  # rates count plaintext bytes, as for h3lab's
    total = sum(len(c) - tag for c in chunks)
    laps = max(1, round(size / total))

    def run() -> None:
        for _ in range(laps):
            for i in range(count):
                fn(nonces[i], chunks[i], header)

    return run, laps * total


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Command(BaseCommand):
    help = (
        "Streamed AES-256-GCM (encrypt, decrypt, the download path) alternated with raw "
        "AES-GCM on the same chunks in one process; ratios per round, load, and peak memory "
        "growth at two file sizes. Prints a table and writes JSON."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--size-mb", type=int, default=256, help="file size (default 256)")
        parser.add_argument("--chunk-kb", type=int, default=1024, help="chunk size (default 1024)")
        parser.add_argument("--rounds", type=int, default=9, help="alternated rounds (default 9)")
        parser.add_argument("--out", default="out/bench_crypto.json", help="JSON output path")
        parser.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
        parser.add_argument(
            "--profile", action="store_true", help="also print a cProfile of decrypt / download"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        from vault import crypto

        size, chunk = opts["size_mb"] << 20, opts["chunk_kb"] << 10
        sizes = {"large": size, "small": max(chunk, size // 4)}
        key = os.urandom(32)
        w = self.stdout.write
        with tempfile.TemporaryDirectory(dir=opts["tmp"]) as tmp:
            files: dict[str, tuple[str, str]] = {}
            for name, n in sizes.items():
                plain, enc = os.path.join(tmp, f"{name}.plain"), os.path.join(tmp, f"{name}.enc")
                with open(plain, "wb") as f:
                    for start in range(0, n, 16 << 20):
                        f.write(os.urandom(min(16 << 20, n - start)))
                with open(plain, "rb") as f, open(enc, "wb") as out:
                    crypto.encrypt_file(key, f, out, chunk_size=chunk)
                files[name] = (plain, enc)
            plain, enc = files["large"]
            contenders = self._contenders(plain, enc, key, chunk, size)
            self._check_round_trip(plain, enc, key)
            for fn, _ in contenders.values():  # warm-up: page cache, allocator, imports
                fn()
            load_before = _load()
            times: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for r in range(opts["rounds"]):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    t = time.perf_counter()
                    contenders[name][0]()
                    times[name].append(time.perf_counter() - t)
            load_after = _load()
            profiles = self._profile(contenders) if opts["profile"] else {}
            memory = {
                op: {
                    label: self._child(op, *files[label], key, chunk)
                    for label in ("small", "large")
                }
                for op in ("encrypt", "decrypt", "download")
            }

        rates = {name: [contenders[name][1] / t / 1e9 for t in ts] for name, ts in times.items()}
        ratios = {
            op: [a / b for a, b in zip(rates[op], rates[anchor], strict=True)]
            for op, anchor in ANCHOR.items()
        }
        report: dict[str, Any] = {
            "machine": f"{os.cpu_count()}-core {platform.machine()}, Python "
            f"{platform.python_version()}, cryptography {_cryptography_version()}",
            "size_bytes": size,
            "chunk_bytes": chunk,
            "rounds": opts["rounds"],
            "load_before": load_before,
            "load_after": load_after,
            "contenders": {
                name: {
                    "bytes": contenders[name][1],
                    "median_gbps": statistics.median(rs),
                    "best_gbps": max(rs),
                    "median_s": statistics.median(times[name]),
                    "min_s": min(times[name]),
                }
                for name, rs in rates.items()
            },
            "ratios": {
                op: {
                    "anchor": ANCHOR[op],
                    "per_round": [round(x, 4) for x in rs],
                    "median": statistics.median(rs),
                    "min": min(rs),
                    "max": max(rs),
                    "goal": GOALS.get(op),
                }
                for op, rs in ratios.items()
            },
            "memory": {
                "sizes_bytes": sizes,
                **{
                    op: {
                        **m,
                        "flat": m["large"]["growth_mib"] <= m["small"]["growth_mib"] * 1.1 + 1,
                    }
                    for op, m in memory.items()
                },
            },
            "profiles": profiles,
        }
        self._print(report)
        target = Path(opts["out"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2))
        w(f"wrote {target}")

    @staticmethod
    def _contenders(
        plain: str, enc: str, key: bytes, chunk: int, size: int
    ) -> dict[str, tuple[Callable[[], None], int]]:
        from vault import crypto

        with open(enc, "rb") as f:
            header = f.read(crypto.HEADER.size)
            prefix = header[-7:]
            step = chunk + crypto.TAG
            total_chunks = max(1, -(-size // chunk))
            pool = min(total_chunks, max(1, RAW_POOL // chunk))
            cts = [f.read(step) for _ in range(pool)]
        with open(plain, "rb") as f:
            pts = [f.read(chunk) for _ in range(pool)]
        nonces = [crypto._nonce(prefix, i, i == total_chunks - 1) for i in range(pool)]
        return {
            "raw_encrypt": _raw("raw_encrypt", pts, nonces, header, key, size),
            "encrypt": (operation("encrypt", plain, enc, key, chunk), size),
            "raw_decrypt": _raw("raw_decrypt", cts, nonces, header, key, size),
            "decrypt": (operation("decrypt", plain, enc, key, chunk), size),
            "download": (operation("download", plain, enc, key, chunk), size),
        }

    @staticmethod
    def _check_round_trip(plain: str, enc: str, key: bytes) -> None:
        from vault import crypto

        digest = hashlib.sha256()
        with open(enc, "rb") as f:
            for piece in crypto.decrypt_stream(key, f):
                digest.update(piece)
        with open(plain, "rb") as f:
            if hashlib.file_digest(f, "sha256").digest() != digest.digest():
                raise RuntimeError("decryption did not restore the plaintext")

    @staticmethod
    def _profile(contenders: dict[str, tuple[Callable[[], None], int]]) -> dict[str, list[str]]:
        profiles = {}
        for op in ("decrypt", "download"):
            prof = cProfile.Profile()
            prof.runcall(contenders[op][0])
            stats = pstats.Stats(prof)
            rows = sorted(
                stats.stats.items(),  # type: ignore[attr-defined]
                key=lambda kv: kv[1][2],  # own time
                reverse=True,
            )[:8]
            profiles[op] = [
                f"{tt * 1000:8.1f} ms own {ct * 1000:8.1f} ms cum {nc:6d}× "
                f"{Path(fn).name}:{line}({name})"
                for (fn, line, name), (_cc, nc, tt, ct, _callers) in rows
            ]
        return profiles

    @staticmethod
    def _child(op: str, plain: str, enc: str, key: bytes, chunk: int) -> dict[str, float]:
        from django.conf import settings

        env = {**os.environ, "PYTHONPATH": str(settings.BASE_DIR)}
        out = subprocess.run(
            [sys.executable, "-c", CHILD, op, plain, enc, key.hex(), str(chunk)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=str(settings.BASE_DIR),
        )
        result: dict[str, float] = json.loads(out.stdout)
        return result

    def _print(self, report: dict[str, Any]) -> None:
        w = self.stdout.write
        mib, kib = report["size_bytes"] >> 20, report["chunk_bytes"] >> 10
        w(f"streamed AES-256-GCM, {mib} MiB file, {kib} KiB chunks, {report['rounds']} rounds")
        w(report["machine"])
        w(f"load average before {report['load_before']}, after {report['load_after']}")
        w(f"{'contender':<14}{'median GB/s':>13}{'best GB/s':>11}{'median ms':>11}{'min ms':>9}")
        for name, c in report["contenders"].items():
            w(
                f"{name:<14}{c['median_gbps']:>13.2f}{c['best_gbps']:>11.2f}"
                f"{c['median_s'] * 1000:>11.1f}{c['min_s'] * 1000:>9.1f}"
            )
        w("")
        w(f"{'ratio':<22}{'median':>8}{'min':>7}{'max':>7}{'goal':>7}  per round")
        for op, r in report["ratios"].items():
            goal = f"{r['goal']:.0%}" if r["goal"] else "-"
            verdict = "" if not r["goal"] else ("  met" if r["median"] >= r["goal"] else "  MISSED")
            w(
                f"{op + ' / ' + r['anchor']:<22}{r['median']:>8.0%}{r['min']:>7.0%}{r['max']:>7.0%}"
                f"{goal:>7}  {' '.join(f'{x:.2f}' for x in r['per_round'])}{verdict}"
            )
        w("")
        mem = report["memory"]
        small, large = mem["sizes_bytes"]["small"] >> 20, mem["sizes_bytes"]["large"] >> 20
        w(f"peak memory growth, fresh process: {small} MiB → {large} MiB file")
        for op in ("encrypt", "decrypt", "download"):
            m = mem[op]
            w(
                f"{op:<14}{m['small']['growth_mib']:>8.1f} MiB → "
                f"{m['large']['growth_mib']:>6.1f} MiB"
                f"   {'flat' if m['flat'] else 'GROWS WITH THE FILE'}"
            )
        for op, rows in report["profiles"].items():
            w(f"\ncProfile, {op} (own time):")
            for row in rows:
                w("  " + row)


def _cryptography_version() -> str:
    import cryptography

    return cryptography.__version__

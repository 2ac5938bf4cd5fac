"""`make audit`: known vulnerabilities in the locked dependency set, with pip-audit.

pip-audit reads the hashed lock (no resolution, nothing installed) and asks a vulnerability
service about each pinned version. It reports a package the service could not answer for as
*skipped* and still exits 0, so an unreachable service would pass silently; this wrapper reads
its JSON report and tells the three outcomes apart:

  0  every locked package was checked and none has a known vulnerability
  1  a known vulnerability (the report names the package, the advisory and the fixed versions)
  3  the audit could not run: the service was unreachable or could not answer for some packages

`.ci/run` fails on 1 and only warns on 3, so a network failure never turns CI red while a real
advisory does. AUDIT_IGNORE (space-separated advisory ids) accepts an advisory that has been
assessed, e.g. `AUDIT_IGNORE="PYSEC-2026-1 GHSA-xxxx" make audit`; say why in the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLEAN, VULNERABLE, NOT_AUDITED = 0, 1, 3


@dataclass(frozen=True)
class Verdict:
    code: int
    lines: list[str]


def judge(report: dict[str, Any]) -> Verdict:
    """Classify pip-audit's JSON report (``{"dependencies": [...], "fixes": [...]}``)."""
    deps: list[dict[str, Any]] = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if d.get("skip_reason")]
    if vulnerable:
        lines = [
            f"{d['name']} {d.get('version', '?')}: {v['id']}"
            f" (fixed in {', '.join(v.get('fix_versions') or []) or 'no release yet'})"
            for d in vulnerable
            for v in d["vulns"]
        ]
        if skipped:
            lines.append(f"({len(skipped)} more packages could not be audited)")
        return Verdict(VULNERABLE, lines)
    if not deps or skipped:
        reasons = sorted({str(d["skip_reason"]).split(":")[0] for d in skipped})
        return Verdict(
            NOT_AUDITED,
            [f"{len(skipped)} of {len(deps)} packages not audited: {'; '.join(reasons)}"],
        )
    return Verdict(CLEAN, [f"{len(deps)} packages audited, no known vulnerabilities"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("requirements", nargs="+", type=Path, help="hashed lock files")
    parser.add_argument("--service", default="pypi", choices=["pypi", "osv"])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole audit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        cmd = [sys.executable, "-m", "pip_audit", "--disable-pip", "--require-hashes"]
        cmd += ["--vulnerability-service", args.service, "--progress-spinner", "off"]
        cmd += ["--format", "json", "--output", str(out)]
        for path in args.requirements:
            cmd += ["--requirement", str(path)]
        for vuln in os.environ.get("AUDIT_IGNORE", "").split():
            cmd += ["--ignore-vuln", vuln]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, check=False, timeout=args.timeout
            )
        except subprocess.TimeoutExpired:
            print(f"audit: NOT RUN (no answer within {args.timeout} s)", file=sys.stderr)
            return NOT_AUDITED
        if not out.is_file():  # pip-audit itself failed before writing its report
            print("\n".join(done.stderr.strip().splitlines()[-1:]), file=sys.stderr)
            print("audit: NOT RUN (pip-audit wrote no report)", file=sys.stderr)
            return NOT_AUDITED
        verdict = judge(json.loads(out.read_text()))
    label = {CLEAN: "ok", VULNERABLE: "VULNERABLE", NOT_AUDITED: "NOT RUN"}[verdict.code]
    for line in verdict.lines:
        print(f"audit: {line}")
    print(f"audit: {label}", file=sys.stderr if verdict.code else sys.stdout)
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())

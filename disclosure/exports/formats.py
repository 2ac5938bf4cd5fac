"""The content files of a bundle: each finding as Markdown and JSON, its evidence (run configs,
metrics as CSV and JSON, artifacts), RO-Crate metadata and CITATION.cff.

In a partner copy every file carries the recipient's mark (:mod:`disclosure.marks`): the
finding's prose is rewritten with the recipient's wording variants, and JSON, CSV and PNG
files carry the copy's metadata token.
"""

from __future__ import annotations

import csv
import io
import json
import mimetypes
from functools import cache
from typing import Any

from django.conf import settings
from django.db.models import Prefetch, prefetch_related_objects
from django.utils import timezone
from django.utils.text import slugify

from disclosure import bundles, marks
from disclosure.exports.rules import ExportRefused, finding_label
from disclosure.models import RecipientMark, ReleaseDecision
from experiments import storage
from experiments.models import Artifact, Finding, MetricPoint, Run, Tier

MARKABLE_MAX = 64 << 20  # files marked in memory (plots, CSV, JSON); larger ones stream as-is


def finding_slug(f: Finding) -> str:
    """The finding's file name stem in the bundle (``findings/<slug>.md``, ``evidence/<slug>/``)."""
    return f"{f.pk:05d}-{slugify(f.title)[:60] or 'finding'}"


def _author(f: Finding) -> str:
    user = f.created_by
    if user is None:
        return settings.H3LAB_PUBLISHER
    return user.get_full_name() or user.get_username()


def _markdown(f: Finding, decisions: list[ReleaseDecision], evidence: list[str], body: str) -> str:
    released = decisions[-1].decided_at.strftime("%Y-%m-%d") if decisions else ""
    lines = [
        f"# {f.title}",
        "",
        f"- Finding: #{f.pk} ({f.public_id})",
        f"- Project: {f.project.name}",
        f"- Tier: {Tier(f.tier).label}",
        f"- Released: {released}",
        f"- Author: {_author(f)}",
        "",
        body.strip(),
        "",
    ]
    if evidence:
        lines += ["## Evidence", "", *[f"- `{p}`" for p in evidence], ""]
    return "\n".join(lines)


def _finding_json(
    f: Finding, decisions: list[ReleaseDecision], evidence: list[str], token: str | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f.pk,
        "public_id": str(f.public_id),
        "title": f.title,
        "body_markdown": f.body,
        "project": {"slug": f.project.slug, "name": f.project.name},
        "tier": Tier(f.tier).label,
        "status": f.status,
        "author": _author(f),
        "created_at": f.created_at.isoformat(),
        "release_decisions": [
            {
                "from": Tier(d.from_tier).label,
                "to": Tier(d.to_tier).label,
                "decided_at": d.decided_at.isoformat(),
                "policy_version": d.policy.version,
                "approvals": d.approvals,
                "rationale": d.rationale,
            }
            for d in decisions
        ],
        "metric_snapshots": [
            {"run": s.run_id, "name": s.name, "step": s.step, "value": s.value}
            for s in f.snapshots.all()
        ],
        "evidence": evidence,
    }
    if token:
        doc[marks.MARK_KEY] = token
    return doc


def _json_bytes(doc: Any, *, sort_keys: bool = True) -> bytes:
    """A machine-read document (finding, config, metrics, RO-Crate) as one line of JSON.
    Without ``indent`` the json module uses its C encoder: with ``indent=2`` it falls back to
    the pure-Python one, which was a fifth of a 1,000-finding export's build time. The
    Markdown beside each finding is the human-readable copy."""
    return json.dumps(doc, sort_keys=sort_keys).encode() + b"\n"


def _metrics_bytes(run_ids: list[int], token: str | None) -> dict[int, tuple[bytes, bytes]]:
    """Every run's metrics as (CSV, JSON) bytes, from one query: a run cited by several
    findings is read and serialised once, not once per finding."""
    by_run: dict[int, list[tuple[str, int, float]]] = {pk: [] for pk in run_ids}
    points = (
        MetricPoint.objects.filter(run_id__in=run_ids)
        .order_by("run_id", "name", "step")
        .values_list("run_id", "name", "step", "value")
    )
    for run_id, name, step, value in points.iterator(chunk_size=20_000):
        by_run[run_id].append((name, step, value))
    return {pk: _metrics_file_bytes(pk, rows, token) for pk, rows in by_run.items()}


def _metrics_file_bytes(
    run_id: int, points: list[tuple[str, int, float]], token: str | None
) -> tuple[bytes, bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "step", "value"])
    writer.writerows(points)
    series: dict[str, list[list[float]]] = {}
    for name, step, value in points:
        series.setdefault(name, []).append([step, value])
    csv_bytes = buf.getvalue().encode()
    json_doc: dict[str, Any] = {"run": run_id, "series": series}
    if token:
        csv_bytes = marks.mark_csv(csv_bytes, token)
        json_doc[marks.MARK_KEY] = token
    return csv_bytes, _json_bytes(json_doc)


# Small evidence files cited by several findings are read once per export and kept in memory
# (each file is otherwise opened twice per citing finding: hashed, then archived), within
# this budget per export; larger ones, and those past the budget, stream from storage.
SHARED_READ_MAX = 1 << 20
SHARED_BUDGET = 64 << 20


class _ArtifactBytes:
    """The bytes of small artifacts, read at most once per export."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.used = 0

    def get(self, a: Artifact) -> bytes | None:
        if a.pk in self.data:
            return self.data[a.pk]
        if a.size > SHARED_READ_MAX or self.used + a.size > SHARED_BUDGET:
            return None
        data = b"".join(storage.open_artifact(a))
        self.data[a.pk] = data
        self.used += len(data)
        return data


def _artifact_file(
    a: Artifact, path: str, token: str | None, shared: _ArtifactBytes | None = None
) -> bundles.BundleFile:
    markable = token and a.size <= MARKABLE_MAX and a.name.endswith((".png", ".csv", ".json"))
    if markable:
        data = b"".join(storage.open_artifact(a))
        if a.name.endswith(".png"):
            data = marks.mark_png(data, token)  # type: ignore[arg-type]
        elif a.name.endswith(".csv"):
            data = marks.mark_csv(data, token)  # type: ignore[arg-type]
        else:
            data = marks.mark_json(data, token)  # type: ignore[arg-type]
        return bundles.BundleFile(path, data)
    kept = shared.get(a) if shared is not None else None
    if kept is not None:
        return bundles.BundleFile(path, kept)
    return bundles.LazyFile(path, opener=lambda: storage.open_artifact_file(a))


def bundle_files(
    findings: list[Finding], *, mark: RecipientMark | None = None
) -> list[bundles.BundleFile]:
    """Every finding's files (Markdown, JSON) and its evidence; :func:`ro_crate` and
    :func:`citation_cff` describe them.

    Raises :class:`~disclosure.exports.rules.ExportRefused` if a finding's evidence was
    destroyed (shredded) since it was released."""
    token = mark.token if mark else None
    files: list[bundles.BundleFile] = []
    # Runs and artifacts of every finding in two queries, each run's config and metrics
    # serialised once however many findings cite it (not one query per finding and run).
    prefetch_related_objects(
        findings,
        Prefetch("runs", Run.objects.order_by("pk"), to_attr="export_runs"),
        Prefetch("artifacts", Artifact.objects.order_by("pk"), to_attr="export_artifacts"),
    )
    runs = {r.pk: r for f in findings for r in getattr(f, "export_runs", [])}
    metrics = _metrics_bytes(sorted(runs), token)
    shared = _ArtifactBytes()
    configs: dict[int, bytes] = {}
    for run in runs.values():
        config = {"run": run.pk, "config": run.config}
        if token:
            config[marks.MARK_KEY] = token
        configs[run.pk] = _json_bytes(config)
    for f in findings:
        slug = finding_slug(f)
        decisions = [d for d in f.decisions.all()]
        evidence: list[bundles.BundleFile] = []
        for run in getattr(f, "export_runs", []):
            base = f"evidence/{slug}/runs/{run.pk}"
            csv_bytes, json_bytes = metrics[run.pk]
            evidence += [
                bundles.BundleFile(f"{base}/config.json", configs[run.pk]),
                bundles.BundleFile(f"{base}/metrics.csv", csv_bytes),
                bundles.BundleFile(f"{base}/metrics.json", json_bytes),
            ]
        for a in getattr(f, "export_artifacts", []):
            if a.is_shredded:
                raise ExportRefused({finding_label(f): [f"evidence {a.name} was destroyed"]})
            evidence.append(
                _artifact_file(a, f"evidence/{slug}/artifacts/{a.run_id}-{a.name}", token, shared)
            )
        paths = [e.path for e in evidence]
        # The body is marked on its own, so each sentence's wording bits depend only on the
        # sentence (an excerpt of it traces the same wherever it is pasted).
        body = marks.mark_text(f.body, mark.secret) if mark is not None else f.body
        text = _markdown(f, decisions, paths, body)
        doc = _finding_json(f, decisions, paths, token)
        doc["body_markdown"] = body
        files.append(bundles.BundleFile(f"findings/{slug}.md", text.encode()))
        files.append(bundles.BundleFile(f"findings/{slug}.json", _json_bytes(doc)))
        files += evidence
    return files


def ro_crate(
    name: str, findings: list[Finding], files: list[bundles.BundleFile], *, partner: bool
) -> bytes:
    """RO-Crate 1.1 metadata (JSON-LD): the root dataset, one File entity per content file,
    authors, publisher, date and license."""
    today = timezone.now().strftime("%Y-%m-%d")
    license_id = settings.H3LAB_BUNDLE_LICENSE
    authors = sorted({_author(f) for f in findings})
    people = [{"@id": f"#author-{slugify(a)}", "@type": "Person", "name": a} for a in authors]
    parts = [
        {
            "@id": f.path,
            "@type": "File",
            "name": f.path.rsplit("/", 1)[-1],
            "encodingFormat": _mime(f.path),
            **({"contentSize": str(len(f.data))} if f.data is not None else {}),
        }
        for f in files
    ]
    parts.append({"@id": "CITATION.cff", "@type": "File", "name": "CITATION.cff"})
    graph: list[dict[str, Any]] = [
        {
            "@id": "ro-crate-metadata.json",
            "@type": "CreativeWork",
            "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"},
            "about": {"@id": "./"},
        },
        {
            "@id": "./",
            "@type": "Dataset",
            "name": name,
            "description": ("Partner copy (restricted; recipient-marked) of " if partner else "")
            + f"{len(findings)} finding(s) released by {settings.H3LAB_PUBLISHER}",
            "datePublished": today,
            "license": {"@id": license_id},
            "author": [{"@id": p["@id"]} for p in people],
            "publisher": {"@id": "#publisher"},
            "hasPart": [{"@id": p["@id"]} for p in parts],
        },
        {"@id": license_id, "@type": "CreativeWork", "name": license_id},
        {"@id": "#publisher", "@type": "Organization", "name": settings.H3LAB_PUBLISHER},
        *people,
        *parts,
    ]
    doc = {"@context": "https://w3id.org/ro/crate/1.1/context", "@graph": graph}
    return _json_bytes(doc, sort_keys=False)


def _mime(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return _mime_of_suffixes(name.partition(".")[2] if "." in name else "")


@cache
def _mime_of_suffixes(suffixes: str) -> str:
    """Once per suffix (``png``, ``tar.gz``), not once per file: ``mimetypes.guess_type``
    parses the whole path as a URL."""
    if suffixes.rpartition(".")[2] == "md":
        return "text/markdown"
    return mimetypes.guess_type(f"file.{suffixes}")[0] or "application/octet-stream"


def citation_cff(name: str, findings: list[Finding]) -> bytes:
    """CITATION.cff 1.2.0 (YAML; strings written as JSON, which YAML reads as-is)."""
    q = json.dumps
    title = findings[0].title if len(findings) == 1 else f"{len(findings)} findings ({name})"
    lines = [
        "cff-version: 1.2.0",
        'message: "If you use these results, please cite them as below."',
        "type: dataset",
        f"title: {q(title)}",
        "authors:",
        *[f"  - name: {q(a)}" for a in sorted({_author(f) for f in findings})],
        f"  - name: {q(settings.H3LAB_PUBLISHER)}",
        f"date-released: {q(timezone.now().strftime('%Y-%m-%d'))}",
        f"license-url: {q(settings.H3LAB_BUNDLE_LICENSE)}",
        "keywords:",
        '  - "interpretability"',
        '  - "H3"',
    ]
    return ("\n".join(lines) + "\n").encode()

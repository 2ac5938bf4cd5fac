"""The demo lab (``manage.py load_demo``): the bundled models imported as finished runs, an
ablation and a patching run of the H3 one, and the finding that cites them sent to review.
The live training run is left out (``--no-train``), as is its cost; tests/test_presets.py
checks that run's config. ``transactional_db``: analyses run through the worker's code path."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from experiments import demo as experiments_demo
from experiments.demo import (
    BUNDLE_DIR,
    MECHANISM_FINDING,
    Demo,
    _bundled_run_name,
    import_bundle,
    make_projects,
    make_users,
)
from experiments.models import (
    Artifact,
    Finding,
    FindingStatus,
    MetricPoint,
    Reveals,
    Run,
    RunKind,
    RunStatus,
    Tier,
)
from experiments.storage import open_artifact
from h3lab import jobs
from h3lab.demobundle import BundleError, verify_bundle
from tests.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


def stored_json(run: Run, name: str) -> Any:
    return json.loads(b"".join(open_artifact(Artifact.objects.get(run=run, name=name))))


@pytest.mark.slow
def test_load_demo_imports_the_bundle_analyses_the_h3_model_and_sends_the_finding_to_review() -> (
    None
):
    out = io.StringIO()
    call_command("load_demo", "--no-train", stdout=out)
    models = verify_bundle(BUNDLE_DIR)
    for model in models:
        run = Run.objects.get(name=_bundled_run_name(model.config))
        assert (run.status, run.kind) == (RunStatus.SUCCEEDED, RunKind.TRAIN)
        assert run.started_at is None  # it did not train here
        assert run.imported is not None
        assert run.imported["weights_sha256"] == model.digests["model.safetensors"]
        assert run.imported["command"] == model.provenance["command"]
        assert run.test_accuracy == model.test_accuracy
        stored = {a.name: a.sha256 for a in run.artifacts.all()}
        assert stored == model.digests  # weights, config, metrics, provenance as bundled
        evals = [r for r in model.history if r["kind"] == "eval"]
        assert MetricPoint.objects.filter(run=run, name="test_accuracy").count() == len(evals)

    h3 = Run.objects.get(project__slug="induction-heads", preset="h3", name__endswith="(bundled)")
    analyses = {r.kind: r for r in Run.objects.filter(source=h3)}
    assert set(analyses) == {RunKind.ABLATION, RunKind.PATCHING}
    assert all(r.status == RunStatus.SUCCEEDED for r in analyses.values())

    finding = Finding.objects.get(title=MECHANISM_FINDING)
    assert finding.reveals == Reveals.MECHANISM
    assert (finding.tier, finding.status) == (Tier.REVIEW, FindingStatus.IN_REVIEW)
    assert set(finding.runs.all()) == {h3, *analyses.values()}
    cited = {(a.run_id, a.name) for a in finding.artifacts.all()}
    ablation, patching = analyses[RunKind.ABLATION], analyses[RunKind.PATCHING]
    assert {(ablation.pk, "ablation.json"), (patching.pk, "patching.json")} <= cited
    # Its numbers are the analyses' own.
    abl, pat = stored_json(ablation, "ablation.json"), stored_json(patching, "patching.json")
    baseline = abl["baseline"]["accuracy"]
    assert f"answers {baseline:.1%} of the" in finding.body
    assert (
        f"scores {pat['clean_accuracy']:.1%} on clean inputs and "
        f"{pat['corrupted_accuracy']:.1%} on corrupted ones"
    ) in finding.body
    worst = min(abl["rows"], key=lambda r: r["accuracy"])
    assert f"Ablating **{worst['component']}** hurts most" in finding.body

    # The run page says where the weights came from.
    page = login(h3.created_by).get(h3.get_absolute_url())  # type: ignore[arg-type]
    assert page.status_code == 200
    html = page.content.decode()
    assert "Imported from the demo bundle" in html and "did not train on this server" in html
    assert h3.imported["weights_sha256"] in html  # type: ignore[index]

    # Loading it again changes nothing.
    counts = (Run.objects.count(), Finding.objects.count(), Artifact.objects.count())
    call_command("load_demo", "--no-train", stdout=io.StringIO())
    assert (Run.objects.count(), Finding.objects.count(), Artifact.objects.count()) == counts


@pytest.fixture
def demo() -> Demo:
    d = Demo(log=lambda _msg: None)
    make_users(d)
    make_projects(d)
    return d


def test_an_imported_run_evaluates_to_the_accuracy_recorded_in_its_bundle(demo: Demo) -> None:
    import_bundle(demo)
    h3 = experiments_demo._analysed_run(demo)
    assert h3 is not None
    from experiments.actions.runs import do_submit_analysis

    evaluation = do_submit_analysis(
        source=h3,
        spec={"kind": "evaluate", "seed": 0},
        queue="cpu",
        enqueue=False,
        acting_user=demo.users["ada"],
    )
    assert jobs.execute_run(evaluation.pk) == "succeeded"
    evaluation.refresh_from_db()
    # A real forward pass over the run's test split, from the stored (encrypted) checkpoint.
    assert evaluation.test_accuracy == h3.imported["evaluation"]["accuracy"]  # type: ignore[index]
    assert evaluation.result["summary"]["examples"] == h3.imported["evaluation"]["examples"]  # type: ignore[index]


def test_a_tampered_bundle_is_refused_and_nothing_is_imported(
    demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE_DIR, bundle)
    weights = next(bundle.glob("*/model.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors does not match its SHA-256"):
        import_bundle(demo, bundle)
    assert not Run.objects.exists()
    # load_demo says so and stops, rather than showing a traceback.
    monkeypatch.setattr(experiments_demo, "BUNDLE_DIR", bundle)
    with pytest.raises(CommandError, match=r"refused.*Rebuild it with"):
        call_command("load_demo", "--no-train", stdout=io.StringIO())
    assert not Run.objects.exists()


def test_the_live_runs_are_queued_for_the_labs_worker(demo: Demo) -> None:
    from experiments.demo import learning, train_runs

    train_runs(demo)
    live = Run.objects.get(name="demo: H3 on associative recall")
    assert live.status == RunStatus.QUEUED and live.celery_task_id  # its job reached the queue
    assert live.config == learning("h3", "associative_recall").to_dict()
    failing = Run.objects.get(name="demo: missing dataset")
    assert failing.status == RunStatus.QUEUED and failing.created_at <= live.created_at
    assert Run.objects.get(name="demo: cancelled sweep").status == RunStatus.CANCELLED
    train_runs(demo)  # again: nothing more
    assert Run.objects.count() == 3

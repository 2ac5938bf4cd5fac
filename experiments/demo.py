"""Experiments demo data for ``manage.py load_demo``: users for every role, two projects, runs,
analyses and findings (the command, in :mod:`web`, adds the disclosure steps after these).

Idempotent: users are created or have their demo password reset, projects, runs and findings
are created once. Three kinds of run:

- **Bundled runs** (:func:`import_bundle`): 2-layer attention and H3 models trained to ≥ 95 %
  test accuracy on the paper's induction-head and associative-recall tasks take longer than a
  first start allows, so they are trained once, packed into ``experiments/demo_bundle/``
  (``python -m h3lab demo-bundle``, :mod:`h3lab.demobundle`) and imported here as finished
  runs, verified against the bundle's digests and marked on their pages as imported, with
  their provenance.
- **A live run** (:func:`train_runs`): H3 on associative recall with the run form's
  quick-start preset (:mod:`experiments.presets`), stopping once it holds ≥ 92 % validation
  accuracy, queued for the lab's worker, which trains it when ``make run`` starts it (so the
  lab's first minutes show a run training); plus a run that fails on the worker and one that
  is cancelled.
- **Analyses** (:func:`analyse_bundled`): an ablation and an activation-patching run of the
  bundled H3 induction model, run here through the worker's code path
  (:func:`h3lab.jobs.execute_run`), which the mechanism finding cites with the numbers they
  measured (:func:`record_findings`).

Each step is a small function of a :class:`Demo`, so the apps above this one add theirs
(reviews, grants, …) after :data:`STEPS` without touching the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User

from experiments.actions.findings import do_record_finding
from experiments.actions.imports import do_import_bundled_run
from experiments.actions.projects import do_add_project_member, do_create_project
from experiments.actions.runs import (
    analysis_source_errors,
    do_cancel_run,
    do_submit_analysis,
    do_submit_run,
)
from experiments.models import Artifact, Finding, Project, Reveals, Run, RunKind, RunStatus
from experiments.presets import preset_for
from h3lab.config import RunConfig, TaskConfig, TrainConfig

# Demo-only credentials, printed by the command and listed in the README. SECURITY: never use
# load_demo on a deployment that faces the internet.
REVIEW_BOARD = settings.H3LAB_REVIEW_BOARD_GROUP
RELEASE_MANAGERS = settings.H3LAB_RELEASE_MANAGERS_GROUP


@dataclass(frozen=True)
class Persona:
    username: str
    password: str
    role: str
    projects: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    superuser: bool = False


PERSONAS: tuple[Persona, ...] = (
    Persona("ada", "ada-h3lab-demo", "researcher", projects=("induction-heads",)),
    Persona("grace", "grace-h3lab-demo", "researcher (second project)", ("associative-recall",)),
    Persona("rosalind", "rosalind-h3lab-demo", "reviewer (review board)", groups=(REVIEW_BOARD,)),
    Persona("mary", "mary-h3lab-demo", "release manager", groups=(RELEASE_MANAGERS,)),
    Persona("chen", "chen-h3lab-demo", "collaborator (trusted partner)"),
    Persona("oscar", "oscar-h3lab-demo", "outsider (signed in, no project)"),
    Persona("admin", "admin-h3lab-demo", "lab admin (superuser)", superuser=True),
)

PROJECTS: tuple[tuple[str, str, str], ...] = (
    (
        "induction-heads",
        "Induction heads",
        "Do H3 layers learn induction-head behaviour as attention does? (Fu, Dao et al. 2022)",
    ),
    (
        "associative-recall",
        "Associative recall",
        "Key-value recall with state-space models versus attention.",
    ),
)


@dataclass
class Demo:
    """What the steps build, handed from one step to the next."""

    users: dict[str, User] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    bundled: dict[str, Run] = field(default_factory=dict)  # bundle model name -> its run
    log: Callable[[str], None] = print


def _tiny(preset: str, task: str, *, steps: int, seed: int = 0, **task_kw: Any) -> RunConfig:
    """A config that trains in a few seconds on a CPU."""
    task_cfg = TaskConfig(
        task, vocab_size=8, seq_len=16, num_train=256, num_test=64, seed=seed, **task_kw
    )
    train = TrainConfig(
        steps=steps,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        eval_every=20,
        checkpoint_every=1000,
        log_every=5,
        seed=seed,
        device="cpu",
    )
    return RunConfig.build(
        preset=preset, n_layer=2, d_model=32, d_state=8, task=task_cfg, train=train
    )


# The demo's finished runs stop once validation accuracy has held this for two evaluations.
DEMO_EARLY_STOP = 0.92
DEMO_EVAL_EVERY = 50


def learning(preset: str, task: str, *, seed: int = 0) -> RunConfig:
    """The run form's quick-start config of ``task`` for ``preset``, with early stopping and
    evaluations often enough that the run stops soon after it has learned."""
    quick = preset_for(task, preset)
    if quick is None:
        raise ValueError(f"no quick-start preset for {task}")
    cfg = quick.config(seed=seed, early_stop_acc=DEMO_EARLY_STOP)
    train = replace(cfg.train, eval_every=DEMO_EVAL_EVERY, checkpoint_every=DEMO_EVAL_EVERY * 4)
    return RunConfig.validated(model=cfg.model, task=cfg.task, train=train, preset=cfg.preset)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the demo's analyses on one thread (the spawned child process reads
    OMP_NUM_THREADS when it imports torch) unless the operator chose a number. Measured on the
    2-core CPU under load 7–10: one thread ran the associative-recall preset at ~4 steps/s, two
    at under 1 (docs/quickstart.md); on a quiet machine one thread costs at most 2×."""
    chosen = os.environ.get("OMP_NUM_THREADS")
    if chosen is None:
        os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def make_users(demo: Demo) -> None:
    for persona in PERSONAS:
        user, _ = User.objects.get_or_create(
            username=persona.username, defaults={"email": f"{persona.username}@h3lab.localhost"}
        )
        user.set_password(persona.password)
        user.is_superuser = user.is_staff = persona.superuser
        user.save()
        for name in persona.groups:
            Group.objects.get_or_create(name=name)[0].user_set.add(user)
        demo.users[persona.username] = user


def make_projects(demo: Demo) -> None:
    admin = demo.users["admin"]
    for slug, name, description in PROJECTS:
        project = Project.objects.filter(slug=slug).first()
        if project is None:
            project = do_create_project(
                slug=slug, name=name, description=description, acting_user=admin
            )
        demo.projects[slug] = project
    for persona in PERSONAS:
        for slug in persona.projects:
            project = demo.projects[slug]
            if not project.group.user_set.filter(pk=demo.users[persona.username].pk).exists():
                do_add_project_member(project, demo.users[persona.username], acting_user=admin)


def _submit(
    demo: Demo, slug: str, author: str, name: str, cfg: RunConfig, exp: str, *, enqueue: bool = True
) -> Run:
    """Submit a run as its author would (its job goes to the queue after commit)."""
    return do_submit_run(
        project=demo.projects[slug],
        cfg=cfg,
        experiment_name=exp,
        name=name,
        enqueue=enqueue,
        acting_user=demo.users[author],
    )


# --- the bundled runs ----------------------------------------------------------------------------

BUNDLE_DIR = Path(__file__).resolve().parent / "demo_bundle"
BUNDLE_LABEL = "demo bundle"
BUNDLE_EXPERIMENT = "mechanism study"
# Which project a bundled model's task belongs to, and who imports it there.
BUNDLE_PROJECTS: dict[str, tuple[str, str]] = {
    "induction_head": ("induction-heads", "ada"),
    "associative_recall": ("associative-recall", "grace"),
}
# The model the analyses and the mechanism finding are about: H3 on induction head.
ANALYSED = ("induction-heads", "h3")
ANALYSES: tuple[tuple[str, dict[str, Any]], ...] = (
    # Sized for the first start: the patching scan runs the model once per hook and position.
    ("ablation", {"examples": 256, "modes": ["zero", "mean"], "seed": 0}),
    ("patching", {"examples": 128, "seed": 0}),
)
MECHANISM_FINDING = "Which parts of H3 carry induction: ablation and patching of a trained model"
# The baselines finding of each project: (project, author, title, task in words).
BASELINE_FINDINGS: tuple[tuple[str, str, str, str], ...] = (
    (
        "induction-heads",
        "ada",
        "H3 and attention on the induction-head task: trained baselines",
        "induction head",
    ),
    (
        "associative-recall",
        "grace",
        "H3 and attention on associative recall: trained baselines",
        "associative recall",
    ),
)

_MODEL_LABEL = {"h3": "H3", "attention": "attention"}


def _bundled_run_name(cfg: RunConfig) -> str:
    model = _MODEL_LABEL.get(cfg.preset, cfg.preset)
    return f"demo: {model} on {cfg.task.name.replace('_', ' ')} (bundled)"


def _project_of(cfg: RunConfig) -> tuple[str, str] | None:
    for prefix, where in BUNDLE_PROJECTS.items():
        if cfg.task.name.startswith(prefix):
            return where
    return None


def import_bundle(demo: Demo, bundle: Path | None = None) -> None:
    """Import every model of the demo bundle as a finished run of its task's project (once).
    The bundle is verified first; a bundle that does not verify stops the demo with the
    reason (:class:`h3lab.demobundle.BundleError`)."""
    from h3lab.demobundle import verify_bundle

    bundle = BUNDLE_DIR if bundle is None else bundle
    if not (bundle / "manifest.json").is_file():
        demo.log(f"bundle: no demo bundle at {bundle}; the demo has no bundled runs")
        return
    for model in verify_bundle(bundle):
        where = _project_of(model.config)
        if where is None:
            demo.log(f"bundle: {model.name} is for task {model.config.task.name}; not imported")
            continue
        slug, author = where
        project, name = demo.projects[slug], _bundled_run_name(model.config)
        run = Run.objects.filter(project=project, name=name).first()
        if run is None:
            run = do_import_bundled_run(
                project=project,
                model=model,
                experiment_name=BUNDLE_EXPERIMENT,
                name=name,
                bundle_label=BUNDLE_LABEL,
                acting_user=demo.users[author],
            )
            demo.log(f"bundle: imported {name!r}, test accuracy {run.test_accuracy:.1%}")
        demo.runs[name] = demo.bundled[model.name] = run


def _analysed_run(demo: Demo) -> Run | None:
    slug, preset = ANALYSED
    return next(
        (
            r
            for r in demo.bundled.values()
            if r.project_id == demo.projects[slug].pk and r.preset == preset
        ),
        None,
    )


# --- the live runs ------------------------------------------------------------------------------


def train_runs(demo: Demo) -> None:
    """The live runs, queued for the lab's worker — unless they exist: the quick-start run,
    which the worker trains while the lab is first looked at (its page shows the progress,
    curves and log live), a run that fails and one the researcher cancelled. Training them
    here would take the first start past its time budget on a busy machine
    (docs/quickstart.md, The demo lab)."""
    existing = Run.objects.filter(
        project__in=demo.projects.values(), name__startswith="demo", kind=RunKind.TRAIN
    ).exclude(name__endswith="(bundled)")
    if existing.exists():
        demo.log("runs: the demo projects already have their live runs; not queueing more")
        for run in existing:
            demo.runs[run.name] = run
        return
    # A realistic failure, queued first so that the worker fails it within seconds: a JSONL
    # task whose file does not exist on the worker.
    broken = _tiny("h3", "jsonl", steps=20, path="/data/missing/corpus.jsonl")
    run = _submit(
        demo, "induction-heads", "ada", "demo: missing dataset", broken, "h3-vs-attention"
    )
    demo.runs[run.name] = run
    live = "demo: H3 on associative recall"
    cfg = learning("h3", "associative_recall")
    demo.runs[live] = _submit(demo, "associative-recall", "grace", live, cfg, "recall")
    demo.log(
        f"runs: queued {live!r} (quick-start preset, up to {cfg.train.steps} steps) and a run "
        "that fails; the lab's worker trains them once `make run` has started it"
    )
    # And one the researcher cancelled before a worker picked it up.
    sweep = _tiny("hybrid", "induction_head", steps=400)
    run = _submit(
        demo, "induction-heads", "ada", "demo: cancelled sweep", sweep, "h3-vs-attention",
        enqueue=False,
    )  # fmt: skip
    do_cancel_run(run, acting_user=demo.users["ada"])
    demo.runs[run.name] = run


# --- the analyses -------------------------------------------------------------------------------


def analyse_bundled(demo: Demo) -> None:
    """An ablation and a patching run of the bundled H3 induction model, run here through the
    worker's code path (:func:`h3lab.jobs.execute_run`) — once."""
    from h3lab.analysis import AnalysisSpec
    from h3lab.jobs import execute_run

    source = _analysed_run(demo)
    if source is None:
        demo.log("analyses: no bundled H3 induction model; no analyses")
        return
    if analysis_source_errors(source):
        demo.log(f"analyses: run #{source.pk} cannot be analysed: {analysis_source_errors(source)}")
        return
    for kind, options in ANALYSES:
        name = f"demo: {kind} of the bundled H3 induction model"
        run = Run.objects.filter(source=source, kind=kind, name=name).first()
        if run is None:
            spec = AnalysisSpec.from_dict({**options, "kind": kind}).to_dict()
            run = do_submit_analysis(
                source=source,
                spec=spec,
                queue=source.queue,
                name=name,
                enqueue=False,  # run right here, as the live training runs are
                acting_user=demo.users["ada"],
            )
            demo.log(f"analyses: running {name!r}…")
            with _one_thread():
                execute_run(run.pk)
            run.refresh_from_db()
            demo.log(f"analyses:   {run.status}")
        demo.runs[name] = run


# --- the findings -------------------------------------------------------------------------------


def _artifact_json(run: Run, name: str) -> Any:
    from experiments.storage import open_artifact

    artifact = Artifact.objects.get(run=run, name=name)
    return json.loads(b"".join(open_artifact(artifact)))


def _pct(x: float) -> str:
    return f"{x:.1%}"


def mechanism_text(source: Run, ablation: Run, patching: Run) -> str:
    """The mechanism finding's body: the numbers the two analyses measured, read back from
    their stored results (``ablation.json``, ``patching.json``)."""
    abl, pat = _artifact_json(ablation, "ablation.json"), _artifact_json(patching, "patching.json")
    base = abl["baseline"]["accuracy"]
    worst: dict[str, dict[str, Any]] = {}
    for row in abl["rows"]:
        if row["component"] not in worst or row["accuracy"] < worst[row["component"]]["accuracy"]:
            worst[row["component"]] = row
    order = sorted(worst.values(), key=lambda r: r["accuracy"])
    task = source.config["task"]
    lines = [
        f"The bundled 2-layer H3 model (run #{source.pk}, imported from the demo bundle; "
        f"{_pct(source.test_accuracy or 0)} on the whole test split) answers "
        f"{_pct(base)} of the {abl['n_examples'] // 2} held-out induction-head examples the "
        f"ablation run scored (vocabulary {task['vocab_size']}, {task['seq_len']} tokens).",
        "",
        f"**Ablation** (run #{ablation.pk}): each component alone, "
        f"{' and '.join(ablation.config['analysis']['modes'])} ablation, the lower of the "
        "accuracies:",
        "",
        "| component | accuracy when ablated | drop |",
        "|---|---|---|",
        *(
            f"| {r['component']} ({r['mode']}) | {_pct(r['accuracy'])} | "
            f"{100 * (base - r['accuracy']):.1f} points |"
            for r in order
        ),
        "",
    ]
    if order:
        first = order[0]
        lines += [
            f"Ablating **{first['component']}** hurts most: {_pct(base)} → "
            f"{_pct(first['accuracy'])}.",
            "",
        ]
    rows = sorted(
        (r for r in pat["rows"] if r["restored"] is not None),
        key=lambda r: r["restored"],
        reverse=True,
    )
    gap = pat["clean_logit_diff"] - pat["corrupted_logit_diff"]
    lines += [
        f"**Activation patching** (run #{patching.pk}, {pat['n_examples']} examples): the "
        "corrupted inputs replace the token after each earlier occurrence of the query. On the "
        f"clean answers the model scores {_pct(pat['clean_accuracy'])} on clean inputs and "
        f"{_pct(pat['corrupted_accuracy'])} on corrupted ones (logit difference clean − "
        f"corrupted answer {pat['clean_logit_diff']:.2f} vs {pat['corrupted_logit_diff']:.2f})."
        + (
            " That gap is too small for the restored fractions below to mean much."
            if abs(gap) < 0.5
            else ""
        )
        + " Patching one clean activation back at a time, the sites that restore the most of "
        "the clean logit difference:",
        "",
        "| hook | position | restored |",
        "|---|---|---|",
        *(
            f"| `{r['hook']}` | {'all' if r['position'] is None else r['position']} | "
            f"{r['restored']:.2f} |"
            for r in rows[:5]
        ),
        "",
        "Every number above is read from the analyses' stored results; their plots and JSON "
        "are cited as evidence.",
    ]
    return "\n".join(lines)


def _record_mechanism_finding(demo: Demo) -> None:
    source = _analysed_run(demo)
    project = demo.projects["induction-heads"]
    if source is None or Finding.objects.filter(project=project, title=MECHANISM_FINDING).exists():
        return
    analyses = {
        kind: Run.objects.filter(source=source, kind=kind, status=RunStatus.SUCCEEDED).first()
        for kind, _ in ANALYSES
    }
    ablation, patching = analyses["ablation"], analyses["patching"]
    if ablation is None or patching is None:
        demo.log("findings: the analyses did not succeed; no mechanism finding")
        return
    evidence = Artifact.objects.filter(
        run__in=(ablation, patching),
        name__in=("ablation.json", "ablation.png", "patching.json", "patching.png"),
    )
    do_record_finding(
        project=project,
        title=MECHANISM_FINDING,
        body=mechanism_text(source, ablation, patching),
        runs=[source, ablation, patching],
        artifacts=list(evidence),
        snapshot_metrics=[(source, "test_accuracy")],
        reveals=Reveals.MECHANISM,
        acting_user=demo.users["ada"],
    )


def record_findings(demo: Demo) -> None:
    """The mechanism finding, and per project a finding of the bundled models' accuracies."""
    _record_mechanism_finding(demo)
    for slug, author, title, task_words in BASELINE_FINDINGS:
        project = demo.projects[slug]
        runs = sorted(
            (r for r in demo.bundled.values() if r.project_id == project.pk),
            key=lambda r: r.preset,
        )
        if not runs or Finding.objects.filter(project=project, title=title).exists():
            continue
        accuracies = ", ".join(
            f"{_MODEL_LABEL.get(r.preset, r.preset)} {_pct(r.test_accuracy or 0)} after "
            f"{r.step:,} steps"
            for r in runs
        )
        task = runs[0].config["task"]
        do_record_finding(
            project=project,
            title=title,
            body=f"2-layer models (d_model {runs[0].config['model']['d_model']}) trained on the "
            f"paper's synthetic **{task_words}** task (vocabulary {task['vocab_size']}, "
            f"{task['seq_len']} tokens) reach these test accuracies: {accuracies} (see the "
            "frozen snapshots). They were trained outside this lab and imported from the demo "
            "bundle; each run page gives the command, commit and seed that trained them.",
            runs=runs,
            snapshot_metrics=[(r, "test_accuracy") for r in runs],
            acting_user=demo.users[author],
        )


STEPS: list[Callable[[Demo], None]] = [
    make_users,
    make_projects,
    import_bundle,
    train_runs,
    analyse_bundled,
    record_findings,
]
# Steps that commit as they go (an analysis's worker code writes from other threads and a
# child process; queued jobs are sent once their run is committed), so the command does not
# wrap them in one transaction.
COMMITTING_STEPS: frozenset[Callable[[Demo], None]] = frozenset({train_runs, analyse_bundled})


def persona_table() -> str:
    rows = [("user", "password", "role", "projects")]
    rows += [(p.username, p.password, p.role, ", ".join(p.projects) or "-") for p in PERSONAS]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

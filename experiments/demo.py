"""Experiments demo data for ``manage.py load_demo``: users for every role, two projects, a few
trained runs and findings (the command, in :mod:`web`, adds the disclosure steps after these).

Idempotent: users are created or have their demo password reset, projects and findings are
created once, and the demo runs are trained only while a project has none. The runs really
train through :func:`h3lab.jobs.execute_run`, the same code path the Celery worker takes, so
metrics, plots and artifacts are genuine. The associative-recall run uses the run form's
quick-start preset (:mod:`experiments.presets`) and stops once it holds ≥ 92 % validation
accuracy, so the demo shows a model that has learned its task; the induction-head runs are
short early-training runs (that task has no quick-start preset yet).

Each step is a small function of a :class:`Demo`, so the apps above this one add theirs
(reviews, grants, …) after :data:`STEPS` without touching the rest.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User

from experiments.actions.findings import do_record_finding
from experiments.actions.projects import do_add_project_member, do_create_project
from experiments.actions.runs import do_cancel_run, do_submit_run
from experiments.models import Finding, Project, Run, RunStatus
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
    """Train the demo's runs on one thread (the spawned training process reads
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


def _submit(demo: Demo, slug: str, author: str, name: str, cfg: RunConfig, exp: str) -> Run:
    return do_submit_run(
        project=demo.projects[slug],
        cfg=cfg,
        experiment_name=exp,
        name=name,
        enqueue=False,  # trained right here, synchronously
        acting_user=demo.users[author],
    )


def train_runs(demo: Demo) -> None:
    """Three finished runs, one failed, one cancelled — unless the projects have runs."""
    from h3lab.jobs import execute_run

    if Run.objects.filter(project__in=demo.projects.values()).exists():
        demo.log("runs: the demo projects already have runs; not training more")
        for run in Run.objects.filter(project__in=demo.projects.values(), name__startswith="demo"):
            demo.runs[run.name] = run
        return
    ih, ar = "induction-heads", "associative-recall"
    planned = [
        # Induction head has no quick-start preset yet (no model learns it within minutes on
        # a 2-core CPU, see docs/quickstart.md): these stay short "early training" runs.
        (ih, "ada", "demo: H3 on induction head", _tiny("h3", "induction_head", steps=80)),
        (
            ih,
            "ada",
            "demo: attention on induction head",
            _tiny("attention", "induction_head", steps=80),
        ),
        (ar, "grace", "demo: H3 on associative recall", learning("h3", "associative_recall")),
    ]
    for slug, author, name, cfg in planned:
        run = _submit(demo, slug, author, name, cfg, "h3-vs-attention" if slug == ih else "recall")
        demo.log(f"runs: training {name!r} (up to {cfg.train.steps} steps)…")
        with _one_thread():
            execute_run(run.pk)
        run.refresh_from_db()
        demo.runs[name] = run
        demo.log(f"runs:   {run.status}, test accuracy {run.test_accuracy}")

    # A realistic failure: a JSONL task whose file does not exist on the worker.
    broken = _tiny("h3", "jsonl", steps=20, path="/data/missing/corpus.jsonl")
    run = _submit(
        demo, "induction-heads", "ada", "demo: missing dataset", broken, "h3-vs-attention"
    )
    execute_run(run.pk)
    demo.runs[run.name] = run
    # And one the researcher cancelled before a worker picked it up.
    sweep = _tiny("hybrid", "induction_head", steps=400)
    run = _submit(demo, ih, "ada", "demo: cancelled sweep", sweep, "h3-vs-attention")
    do_cancel_run(run, acting_user=demo.users["ada"])
    demo.runs[run.name] = run


def record_findings(demo: Demo) -> None:
    h3 = demo.runs.get("demo: H3 on induction head")
    attn = demo.runs.get("demo: attention on induction head")
    recall = demo.runs.get("demo: H3 on associative recall")
    wanted = [
        (
            "induction-heads",
            "ada",
            "Early training: H3 tracks attention on the induction-head task",
            "After 80 steps on the synthetic **induction head** task, the 2-layer H3 model and "
            "the attention baseline reach similar final-token accuracy (see the frozen "
            "snapshots). Longer runs are needed before this leaves the team.",
            [r for r in (h3, attn) if r],
        ),
        (
            "associative-recall",
            "grace",
            "A first H3 baseline on associative recall",
            "A 2-layer H3 model trained on key-value **associative recall** with the "
            "quick-start settings (vocabulary 8, sequences of 16 tokens) until it held ≥ 92 % "
            "validation accuracy; the baseline the gate ablations will be compared against.",
            [r for r in (recall,) if r],
        ),
    ]
    for slug, author, title, body, runs in wanted:
        project = demo.projects[slug]
        if Finding.objects.filter(project=project, title=title).exists():
            continue
        finished = [r for r in runs if r.status == RunStatus.SUCCEEDED]
        do_record_finding(
            project=project,
            title=title,
            body=body,
            runs=finished,
            snapshot_metrics=[(r, "test_accuracy") for r in finished],
            acting_user=demo.users[author],
        )


STEPS: list[Callable[[Demo], None]] = [
    make_users,
    make_projects,
    train_runs,
    record_findings,
]


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

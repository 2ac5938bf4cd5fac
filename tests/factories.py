"""Factories for test data: small functions with sensible defaults, no JSON fixtures."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User

from experiments.actions.projects import do_create_project
from experiments.models import Experiment, Finding, MetricPoint, Project, Run, RunStatus, Tier
from h3lab.config import RunConfig, TaskConfig, TrainConfig

if TYPE_CHECKING:
    from tests.conftest import Cast, Lab

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def make_user(username: str | None = None, **kw: Any) -> User:
    username = username or f"user{next(_seq)}"
    return User.objects.create_user(
        username=username, password=PASSWORD, email=f"{username}@lab.test", **kw
    )


def make_project(
    slug: str | None = None, *, members: list[User] | tuple[User, ...] = ()
) -> Project:
    slug = slug or f"project-{next(_seq)}"
    return do_create_project(
        slug=slug, name=slug.replace("-", " ").title(), members=members, acting_user=None
    )


def tiny_config(n_layer: int = 1, **train_kw: Any) -> RunConfig:
    """A run that trains in about a second on a CPU."""
    train = {"steps": 20, "batch_size": 8, "eval_every": 10, "checkpoint_every": 10, **train_kw}
    return RunConfig.build(
        preset="h3",
        n_layer=n_layer,
        d_model=16,
        d_state=8,
        task=TaskConfig("induction_head", vocab_size=8, seq_len=12, num_train=64, num_test=16),
        train=TrainConfig(**train),
    )


def make_run(
    project: Project,
    *,
    status: str = RunStatus.SUCCEEDED,
    config: RunConfig | None = None,
    experiment: str = "default",
    user: User | None = None,
    **fields: Any,
) -> Run:
    """A run row in any state, without enqueueing a job."""
    cfg = config or tiny_config()
    exp, _ = Experiment.objects.get_or_create(project=project, name=experiment)
    return Run.objects.create(
        experiment=exp,
        project=project,
        created_by=user,
        config=cfg.to_dict(),
        preset=cfg.preset,
        task=cfg.task.name,
        total_steps=cfg.train.steps,
        status=status,
        **fields,
    )


def add_metrics(run: Run, name: str, values: list[float]) -> None:
    MetricPoint.objects.bulk_create(
        MetricPoint(run=run, name=name, step=i * 10, value=v) for i, v in enumerate(values)
    )


def make_finding(
    project: Project, *, tier: int = Tier.TEAM, title: str | None = None, **kw: Any
) -> Finding:
    return Finding.objects.create(
        project=project,
        title=title or f"Finding {next(_seq)}",
        body=kw.pop("body", "An **induction head** forms at step 300."),
        tier=tier,
        **kw,
    )


# --- disclosure ---------------------------------------------------------------------------------


def add_to_group(user: User, name: str) -> None:
    from django.contrib.auth.models import Group

    Group.objects.get_or_create(name=name)[0].user_set.add(user)


def make_reviewer(username: str) -> User:
    from django.conf import settings

    user = make_user(username)
    add_to_group(user, settings.H3LAB_REVIEW_BOARD_GROUP)
    return user


def make_release_manager(username: str) -> User:
    from django.conf import settings

    user = make_user(username)
    add_to_group(user, settings.H3LAB_RELEASE_MANAGERS_GROUP)
    return user


def make_agreement(version: int, *, hours_ago: float = 48) -> Any:
    from datetime import timedelta

    from django.utils import timezone

    from disclosure.models import AgreementVersion

    return AgreementVersion.objects.create(
        version=version,
        title="Collaborator agreement",
        text=f"Version {version}: do not redistribute restricted findings.",
        effective_at=timezone.now() - timedelta(hours=hours_ago),
    )


def make_grant(
    user: User | None = None, *, project: Project | None = None, days: float = 30, **kw: Any
) -> Any:
    from datetime import timedelta

    from django.utils import timezone

    from disclosure.models import AgreementVersion, Grant

    agreement = AgreementVersion.objects.order_by("-version").first()
    assert agreement is not None, "make_agreement() before make_grant()"
    return Grant.objects.create(
        user=user,
        project=project,
        expires_at=timezone.now() + timedelta(days=days),
        agreement=agreement,
        **kw,
    )


def accept(user: User, agreement: Any) -> None:
    from disclosure.models import AgreementAcceptance

    AgreementAcceptance.objects.create(user=user, agreement=agreement)


def make_cast(lab: Lab) -> Cast:
    from tests.conftest import Cast

    v1 = make_agreement(1, hours_ago=72)
    v2 = make_agreement(2, hours_ago=1)
    carol, erin, nick = make_user("carol"), make_user("erin"), make_user("nick")
    make_grant(carol, project=lab.project)
    make_grant(erin, project=lab.project, days=-1)
    make_grant(nick, project=lab.project)
    for user in (carol, erin):
        accept(user, v2)
    accept(nick, v1)
    return Cast(
        lab=lab,
        rita=make_reviewer("rita"),
        rex=make_reviewer("rex"),
        mara=make_release_manager("mara"),
        carol=carol,
        erin=erin,
        nick=nick,
        agreement=v2,
    )

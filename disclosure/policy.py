"""The one place that decides who may see what.

Every path to a project, run, artifact or finding — pages, lists, search, downloads, API,
exports, admin — asks this module. Lists get a queryset filtered in SQL (a constant number of
queries, whatever the number of rows); single objects come from :func:`get_visible_or_404`,
which raises ``Http404`` for missing and forbidden alike, so a probe learns nothing.

Tiers (:class:`experiments.models.Tier`) are ordered: a finding at tier *t* is visible to
everyone cleared for *t* or any tier above it.

- team (0): members of the finding's project (the project's group)
- review (1): + groups cleared for review (``GroupClearance``: the review board and the
  release managers), except a reviewer's own recusals
- partners (2): + collaborators with an active, unexpired grant covering the project or the
  finding, who accepted the agreement version in force
- public (3): everyone, anonymous included

Retracted findings drop out of every list immediately (except for their own team); the
tombstone page is shown to whoever could read them before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import MultipleObjectsReturned, ObjectDoesNotExist
from django.db import connection
from django.db.models import BooleanField, Model, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.http import Http404
from django.utils import timezone
from guardian.shortcuts import get_objects_for_user

from disclosure.models import (
    EFFECTIVE_APPROVALS,
    AgreementAcceptance,
    AgreementVersion,
    Grant,
    GrantApproval,
    GroupClearance,
    Notification,
    ObjectionClearance,
    ProjectGroupObjectPermission,
    ProjectUserObjectPermission,
    Recusal,
    ReleaseRequest,
    Vote,
)
from experiments.models import Artifact, Finding, FindingStatus, Project, Run, Tier
from experiments.users import User, Viewer

if TYPE_CHECKING:
    from disclosure.models import Export
    from experiments.models import FindingRevision

M = TypeVar("M", bound=Model)


def _authenticated(user: Viewer) -> TypeGuard[User]:
    """An active, signed-in user (always an instance of the auth user model)."""
    return bool(user is not None and user.is_authenticated and user.is_active)


def is_lab_admin(user: Viewer) -> TypeGuard[User]:
    """Superusers administer the lab and see everything (and every read is audited)."""
    return _authenticated(user) and bool(user.is_superuser)


def member_projects(user: Viewer) -> QuerySet[Project]:
    """Projects whose team the user belongs to (lazy; usable as a subquery)."""
    if not _authenticated(user):
        return Project.objects.none()
    if is_lab_admin(user):
        return Project.objects.all()
    return Project.objects.filter(group__user=user)


def is_member(user: Viewer, project: Project) -> bool:
    if not _authenticated(user):
        return False
    return is_lab_admin(user) or project.pk in roles(user).member_projects


# --- projects and runs: team only -------------------------------------------------------------


def visible_projects(user: Viewer) -> QuerySet[Project]:
    return member_projects(user)


def visible_runs(user: Viewer) -> QuerySet[Run]:
    """Runs are working material: visible to their project's team only."""
    if is_lab_admin(user):
        return Run.objects.all()
    if not _authenticated(user):
        return Run.objects.none()
    # The team's project ids from the roles read once per request (a short literal list):
    # cheaper to build and to plan than the membership subquery, for every run page and poll.
    return Run.objects.filter(project_id__in=sorted(roles(user).member_projects))


def openable_run_ids(user: Viewer, runs: Iterable[Run]) -> set[int]:
    """Which of ``runs`` the user may open (:func:`visible_runs`, decided from the request's
    roles without a query of its own)."""
    if is_lab_admin(user):
        return {r.pk for r in runs}
    if not _authenticated(user):
        return set()
    team = roles(user).member_projects
    return {r.pk for r in runs if r.project_id in team}


# --- roles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Roles:
    """What the database says about one signed-in user's roles, read in one query.

    ``groups``: (id, name) of the user's groups; ``member_projects``: the projects whose team
    group they are in; ``delegated_projects``: the projects on which they hold guardian's
    ``change_project`` (directly or through a group); ``recused_findings``: the findings they
    recused themselves from. Beside them, in the same query, ``unread_notifications``: how
    many of their notifications they have not read (the navigation shows it on every page).
    """

    groups: frozenset[tuple[int, str]]
    member_projects: frozenset[int]
    delegated_projects: frozenset[int]
    recused_findings: frozenset[int]
    unread_notifications: int = 0

    @property
    def group_names(self) -> frozenset[str]:
        return frozenset(name for _, name in self.groups)

    @property
    def group_ids(self) -> frozenset[int]:
        return frozenset(pk for pk, _ in self.groups)


# SECURITY: roles are memoized for one request only (grants, memberships and recusals change
# between requests, and a revocation must take effect on the next one). The cache lives in a
# context variable that :func:`roles_once_per_request` (the ``RolesOncePerRequestMiddleware``)
# sets at the start of a request and resets at its end; outside a request (Celery, commands,
# tests calling the policy directly) nothing is memoized. A change to a user's groups or
# object permissions during the request empties it (``disclosure.receivers``).
_request_roles: ContextVar[dict[int, Roles] | None] = ContextVar("h3lab_roles", default=None)


@contextmanager
def roles_once_per_request() -> Iterator[None]:
    """Memoize :func:`roles` per user until the block ends (one request)."""
    token = _request_roles.set({})
    try:
        yield
    finally:
        _request_roles.reset(token)


def forget_roles() -> None:
    """Drop the roles memoized in this request (after a change to groups or permissions)."""
    memo = _request_roles.get()
    if memo is not None:
        memo.clear()


@cache
def _roles_sql() -> str:
    def t(model: type[Model]) -> str:
        return connection.ops.quote_name(model._meta.db_table)

    user_groups = t(get_user_model().groups.through)
    groups = f"SELECT group_id FROM {user_groups} WHERE user_id = %s"  # noqa: S608
    change_project = (
        f"SELECT p.id FROM {t(Permission)} p JOIN {t(ContentType)} c"  # noqa: S608
        " ON c.id = p.content_type_id WHERE p.codename = 'change_project'"
        " AND c.app_label = 'experiments' AND c.model = 'project'"
    )
    return " UNION ALL ".join(
        [
            f"SELECT 'g', g.id, g.name FROM {t(Group)} g"  # noqa: S608
            f" JOIN {user_groups} ug ON ug.group_id = g.id WHERE ug.user_id = %s",
            f"SELECT 'p', id, NULL FROM {t(Project)} WHERE group_id IN ({groups})",  # noqa: S608
            f"SELECT 'd', content_object_id, NULL FROM {t(ProjectUserObjectPermission)}"  # noqa: S608
            f" WHERE user_id = %s AND permission_id IN ({change_project})",
            f"SELECT 'd', content_object_id, NULL FROM {t(ProjectGroupObjectPermission)}"  # noqa: S608
            f" WHERE group_id IN ({groups}) AND permission_id IN ({change_project})",
            f"SELECT 'r', finding_id, NULL FROM {t(Recusal)} WHERE reviewer_id = %s",  # noqa: S608
            f"SELECT 'n', COUNT(*), NULL FROM {t(Notification)}"  # noqa: S608
            " WHERE user_id = %s AND read_at IS NULL",
        ]
    )


def _load_roles(user: User) -> Roles:
    rows: dict[str, set[Any]] = {"g": set(), "p": set(), "d": set(), "r": set(), "n": set()}
    with connection.cursor() as cursor:
        cursor.execute(_roles_sql(), [user.pk] * 6)
        for kind, pk, name in cursor.fetchall():
            rows[kind].add((pk, name) if kind == "g" else pk)
    return Roles(
        groups=frozenset(rows["g"]),
        member_projects=frozenset(rows["p"]),
        delegated_projects=frozenset(rows["d"]),
        recused_findings=frozenset(rows["r"]),
        unread_notifications=sum(rows["n"]),
    )


def roles(user: User) -> Roles:
    """The user's :class:`Roles`: one query, memoized for the rest of the request."""
    memo = _request_roles.get()
    if memo is not None and user.pk in memo:
        return memo[user.pk]
    found = _load_roles(user)
    if memo is not None:
        memo[user.pk] = found
    return found


def _in_group(user: Viewer, name: str) -> TypeGuard[User]:
    return _authenticated(user) and name in roles(user).group_names


def _recused(user: User, finding: Finding) -> bool:
    return finding.pk in roles(user).recused_findings


def is_reviewer(user: Viewer) -> TypeGuard[User]:
    """On the review board (the group named by ``H3LAB_REVIEW_BOARD_GROUP``)."""
    return _in_group(user, settings.H3LAB_REVIEW_BOARD_GROUP)


def is_release_manager(user: Viewer) -> TypeGuard[User]:
    """A release manager (the group named by ``H3LAB_RELEASE_MANAGERS_GROUP``) or a superuser."""
    return is_lab_admin(user) or _in_group(user, settings.H3LAB_RELEASE_MANAGERS_GROUP)


# --- findings ---------------------------------------------------------------------------------


def _not_retracted() -> Q:
    return ~Q(status=FindingStatus.RETRACTED)


# The user's facts as small, uncorrelated subqueries of the finding statement. They are written
# as SQL text (table and column names from the models) rather than nested querysets: building and
# compiling seven ORM subqueries cost ~4 ms of Python per statement, ten times what the database
# spends running the whole page; a RawSQL costs nothing to build. Every one depends only on the
# user and ``now``, so the database evaluates each once (hashed), not per row.
# SECURITY: the SQL text is built only from model metadata (table names quoted by the
# connection) and the EFFECTIVE_APPROVALS constants; every value (user ids, times, tiers) is a
# bound %s parameter. Hence the S608/S611 noqa on the lines below.


@cache
def _sql() -> dict[str, str]:
    def t(model: type[Model]) -> str:
        return connection.ops.quote_name(model._meta.db_table)

    groups = f"SELECT group_id FROM {t(get_user_model().groups.through)} WHERE user_id = %s"  # noqa: S608
    agreement_in_force = (
        f"SELECT id FROM {t(AgreementVersion)} WHERE effective_at <= %s "  # noqa: S608
        "ORDER BY version DESC LIMIT 1"
    )
    # SECURITY: a grant awaiting a release manager's approval (or declined) gives nothing.
    approvals = ", ".join(f"'{a.value}'" for a in EFFECTIVE_APPROVALS)
    grants = (
        f"FROM {t(Grant)} WHERE revoked_at IS NULL AND expires_at > %s AND max_tier <= %s"
        f" AND approval IN ({approvals}) AND (user_id = %s OR group_id IN ({groups}))"
    )
    return {
        "accepted": (
            f"EXISTS (SELECT 1 FROM {t(AgreementAcceptance)}"  # noqa: S608
            f" WHERE user_id = %s AND agreement_id = ({agreement_in_force}))"
        ),
        "team": f"SELECT id FROM {t(Project)} WHERE group_id IN ({groups})",  # noqa: S608
        "lowest_clearance": (
            f"SELECT MIN(tier) FROM {t(GroupClearance)} WHERE group_id IN ({groups})"  # noqa: S608
        ),
        "recused": f"SELECT finding_id FROM {t(Recusal)} WHERE reviewer_id = %s",  # noqa: S608
        "granted_projects": f"SELECT project_id {grants} AND project_id IS NOT NULL",
        "granted_findings": f"SELECT finding_id {grants} AND finding_id IS NOT NULL",
    }


def _team_q(user: User) -> Q:
    """Findings of the projects whose group the user is in (:func:`member_projects`)."""
    return Q(project_id__in=RawSQL(_sql()["team"], [user.pk]))  # noqa: S611


def _clearance_q(user: User) -> Q:
    """Group clearance (review board, release managers: data in GroupClearance): findings at
    the user's lowest cleared tier and above, except those the user recused from. No clearance
    gives NULL, which matches nothing.

    SECURITY: a recusal (conflict of interest) withdraws the review-board view of that finding
    too, not just the vote; the reviewer still sees it through any other route (team, grant,
    public).
    """
    lowest = RawSQL(_sql()["lowest_clearance"], [user.pk])  # noqa: S611
    recused = RawSQL(_sql()["recused"], [user.pk])  # noqa: S611
    return Q(tier__gte=lowest) & ~Q(pk__in=recused)


def _grant_q(user: User, now: datetime) -> Q:
    """Collaborators: findings at or above a grant's tier, in the granted project or the granted
    finding, while the grant (the user's own or a group's) is unrevoked, unexpired and needs no
    approval or was approved, and the user has accepted the agreement version in force now.

    SECURITY: no agreement in force, or one the user has not accepted, makes the whole branch
    false (fail closed). A grant for the review tier also covers partners: the branch for tier
    *t* takes the grants whose ``max_tier`` is at most *t*.
    """
    at = connection.ops.adapt_datetimefield_value(now)
    accepted = RawSQL(_sql()["accepted"], [user.pk, at], output_field=BooleanField())  # noqa: S611
    scopes = Q()
    for tier in (Tier.PARTNERS, Tier.REVIEW):
        params = [at, tier, user.pk, user.pk]
        projects = RawSQL(_sql()["granted_projects"], params)  # noqa: S611
        findings = RawSQL(_sql()["granted_findings"], params)  # noqa: S611
        tiers = Q(tier__gte=tier) if tier == Tier.PARTNERS else Q(tier=tier)
        scopes |= tiers & (Q(project_id__in=projects) | Q(pk__in=findings))
    # The agreement check once, outside the grant subqueries: PostgreSQL plans each copy.
    return Q(accepted) & scopes


def finding_visibility_q(
    user: Viewer, *, include_retracted: bool = False, now: datetime | None = None
) -> Q:
    """A Q over Finding that is true exactly for the findings ``user`` may read.

    Everything is a subquery of the one SQL statement (no queries are run here), so a list
    costs its page query plus its count, whatever the user's groups, grants or recusals.
    SECURITY: global model permissions (``experiments.view_finding``) are never consulted; only
    superusers see everything. Retracted findings stay visible to their own team only;
    ``include_retracted`` gives the set a user *would* see, used for tombstone pages.
    For a signed-in non-admin the Q must depend on the user only through ``user.pk`` and on
    time only through ``now``: :func:`visible_findings` compiles it once for every such user
    (a test compares the two for every persona).
    """
    released = Q(tier=Tier.PUBLIC)
    if not _authenticated(user):
        return released if include_retracted else released & _not_retracted()
    if is_lab_admin(user):
        return Q()
    others = released | _clearance_q(user) | _grant_q(user, now or timezone.now())
    return _team_q(user) | (others if include_retracted else others & _not_retracted())


def visible_findings(user: Viewer, *, now: datetime | None = None) -> QuerySet[Finding]:
    """The findings ``user`` may read: :func:`finding_visibility_q` as one WHERE clause.

    For a signed-in user who is not a lab admin the clause comes from :func:`_where_template`:
    the SQL that Django compiles from the Q, compiled once per process and filled with this
    user's id and the current time. Building and compiling the Q's ~60 nodes cost several
    milliseconds of Python on every list, page and API call — more than the database spends
    answering. ``tests/test_visibility_fast_path.py`` holds the two equal, statement and
    parameters, for every persona.
    """
    if not _authenticated(user) or is_lab_admin(user):
        return Finding.objects.filter(finding_visibility_q(user, now=now))
    sql, slots = _where_template(connection.vendor)
    at = connection.ops.adapt_datetimefield_value(now or timezone.now())
    params = [user.pk if s is _USER else at if s is _NOW else s for s in slots]
    # SECURITY: the text is Django's own compilation of the policy Q (model metadata and
    # constants); the user's id and the time are bound parameters, never spliced in.
    return Finding.objects.filter(_FindingWhere(sql, params, output_field=BooleanField()))


class _FindingWhere(RawSQL):
    """A compiled WHERE clause over the finding table, whose name in the clause is filled in
    when the statement is compiled: inside another statement (``pk__in=visible_findings(u)
    .values("pk")``) Django renames the table (``U0``), and a clause that kept the table's
    own name would refer to the *outer* statement's findings."""

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        table = compiler.quote_name_unless_alias(compiler.query.get_initial_alias())
        return f"({self.sql.replace(_TABLE, table)})", tuple(self.params)


_USER, _NOW = object(), object()  # parameter slots of the WHERE template
_TABLE = "__h3lab_finding_table__"  # where the finding table's name or alias goes
# Sentinels compiled in place of a real user and time: no real id is negative, and no
# finding's policy has anything to do with 1901, so a parameter equal to one of them is a slot.
_SENTINEL_PK = -918_273_645
_SENTINEL_NOW = datetime(1901, 2, 3, 4, 5, 6, 789_000, tzinfo=UTC)


@cache
def _where_template(vendor: str) -> tuple[str, tuple[Any, ...]]:
    """(WHERE SQL, parameter slots) of :func:`finding_visibility_q` for a signed-in user who is
    not a lab admin: each slot is ``_USER``, ``_NOW`` or a constant. ``vendor`` keys the cache
    (the SQL is the connection's dialect)."""
    sentinel = get_user_model()(pk=_SENTINEL_PK, is_superuser=False)
    query = Finding.objects.filter(finding_visibility_q(sentinel, now=_SENTINEL_NOW)).query
    compiler = query.get_compiler(connection=connection)
    sql, params = query.where.as_sql(compiler, connection)
    # Every reference to the finding table is to its columns (the subqueries of _sql() read
    # other tables): it becomes the placeholder _FindingWhere fills in.
    own_name = connection.ops.quote_name(Finding._meta.db_table)
    sql = sql.replace(f"{own_name}.", f"{_TABLE}.")
    if own_name in sql:  # a use that is not a column reference: refuse to guess
        raise RuntimeError("the visibility clause names the finding table other than by column")
    at = connection.ops.adapt_datetimefield_value(_SENTINEL_NOW)
    slots = tuple(_USER if p == _SENTINEL_PK else _NOW if p == at else p for p in params)
    return sql, slots


def tombstones(user: Viewer) -> QuerySet[Finding]:
    """Retracted findings the user would otherwise see (their tombstone pages)."""
    q = finding_visibility_q(user, include_retracted=True)
    return Finding.objects.filter(q, status=FindingStatus.RETRACTED)


# --- artifacts --------------------------------------------------------------------------------


def visible_artifacts(user: Viewer) -> QuerySet[Artifact]:
    """Team members see their runs' artifacts; anyone else sees the artifacts cited as
    evidence by a (not retracted) finding they can read — reviewers need the evidence they
    assess, partners the evidence they were granted, the public released evidence."""
    if is_lab_admin(user):
        return Artifact.objects.all()
    readable = Finding.objects.filter(finding_visibility_q(user)).exclude(
        status=FindingStatus.RETRACTED
    )
    cited = Q(
        pk__in=Finding.artifacts.through.objects.filter(finding__in=readable).values("artifact_id")
    )
    if not _authenticated(user):
        return Artifact.objects.filter(cited)
    team = Q(project__in=member_projects(user).values("pk"))
    return Artifact.objects.filter(team | cited)


# --- single objects ---------------------------------------------------------------------------


def get_visible_or_404(queryset: QuerySet[M], **lookup: Any) -> M:
    """Fetch one object from a policy-restricted queryset.

    SECURITY: missing and forbidden both raise Http404 with the same message, so the response
    does not reveal whether the object exists.
    """
    try:
        return queryset.get(**lookup)
    except (ObjectDoesNotExist, MultipleObjectsReturned, ValueError):
        raise Http404("Not found.") from None


def get_project_or_404(user: Viewer, slug: str) -> Project:
    return get_visible_or_404(visible_projects(user), slug=slug)


def get_run_or_404(user: Viewer, pk: Any) -> Run:
    return get_visible_or_404(visible_runs(user).select_related("experiment", "project"), pk=pk)


def get_finding_or_404(user: Viewer, pk: Any) -> Finding:
    return get_visible_or_404(visible_findings(user).select_related("project"), pk=pk)


def get_finding_or_tombstone_or_404(user: Viewer, pk: Any) -> tuple[Finding, bool]:
    """(finding, True) when the user may read it; (finding, False) for the tombstone of a
    retracted finding they could read before; Http404 otherwise."""
    try:
        return get_finding_or_404(user, pk), True
    except Http404:
        return get_visible_or_404(tombstones(user), pk=pk), False


def get_artifact_or_404(user: Viewer, pk: Any) -> Artifact:
    return get_visible_or_404(visible_artifacts(user).select_related("run", "project"), pk=pk)


# --- actions a user may take --------------------------------------------------------------------


def can_submit_run(user: Viewer, project: Project) -> bool:
    return is_member(user, project)


def can_manage_run(user: Viewer, run: Run) -> bool:
    """Cancel / rerun / record a finding from it: any member of the run's project."""
    return is_member(user, run.project)


def can_edit_finding(user: Viewer, finding: Finding) -> bool:
    return is_member(user, finding.project) and not finding.is_retracted


# Callers fetch the finding through get_finding_or_404 first: these decide actions on a
# finding the user can already see.


def can_request_review(user: Viewer, finding: Finding) -> bool:
    """Team to review tier: the project's own members."""
    return finding.tier == Tier.TEAM and can_edit_finding(user, finding)


def can_manage_releases(user: Viewer, project: Project) -> bool:
    """Schedule releases, manage grants and resolve objections for ``project``: release
    managers, or a user delegated ``experiments.change_project`` on it through guardian's
    direct-FK object permissions (global permissions are not consulted)."""
    if is_release_manager(user):
        return True
    if not _authenticated(user):
        return False
    return project.pk in roles(user).delegated_projects


def can_request_release(user: Viewer, finding: Finding) -> bool:
    """Ask for the step above review: the team or a release manager."""
    if finding.is_retracted or finding.tier not in (Tier.REVIEW, Tier.PARTNERS):
        return False
    return is_member(user, finding.project) or can_manage_releases(user, finding.project)


def can_review(user: Viewer, finding: Finding) -> TypeGuard[User]:
    """Assess, approve, object or recuse: a board member who has not recused and is not on
    the finding's own team (reviewing one's own work is a conflict of interest)."""
    return (
        finding.tier >= Tier.REVIEW
        and not finding.is_retracted
        and is_reviewer(user)
        and not is_member(user, finding.project)
        and not _recused(user, finding)
    )


def can_see_review(user: Viewer, finding: Finding) -> bool:
    """Assessments, votes and the review timeline: the team, reviewers who have not recused,
    and release managers. SECURITY: partners and the public see the finding, not the
    dual-use deliberation about it (rationales can describe the risky part)."""
    if is_member(user, finding.project) or can_manage_releases(user, finding.project):
        return True
    return is_reviewer(user) and not _recused(user, finding)


def can_retract(user: Viewer, finding: Finding) -> bool:
    return not finding.is_retracted and (
        is_member(user, finding.project) or can_manage_releases(user, finding.project)
    )


def can_view_audit(user: Viewer) -> bool:
    return is_release_manager(user)


def manageable_projects(user: Viewer) -> QuerySet[Project]:
    """Projects whose grants the user may manage."""
    if is_release_manager(user):
        return Project.objects.all()
    if not _authenticated(user):
        return Project.objects.none()
    return get_objects_for_user(
        user, "experiments.change_project", Project, accept_global_perms=False
    )


# --- who can see a finding -------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    user: User
    route: str  # "team" | "review board" | "release managers" | "grant" | "lab admin" | …


@dataclass(frozen=True)
class Audience:
    """Who can read a finding now: everyone (public), and the named people who can read it by
    another route. Computed from candidates (the team, cleared groups, grant holders, lab
    admins), each then confirmed with the branches of :func:`finding_visibility_q` itself, so
    the list says exactly what the policy enforces."""

    public: bool
    readers: list[Reader]


def can_see_audience(user: Viewer, finding: Finding) -> bool:
    """The team and whoever manages the project's releases (and can read the finding)."""
    if not visible_findings(user).filter(pk=finding.pk).exists():
        return False
    return is_member(user, finding.project) or can_manage_releases(user, finding.project)


def audience(finding: Finding) -> Audience:
    model = get_user_model()
    now = timezone.now()
    team = set(finding.project.group.user_set.values_list("pk", flat=True))
    cleared: dict[int, str] = {}
    for clearance in GroupClearance.objects.filter(tier__lte=finding.tier).select_related("group"):
        for pk in clearance.group.user_set.values_list("pk", flat=True):
            cleared.setdefault(pk, clearance.group.name)
    grants = Grant.objects.filter(
        Q(project=finding.project_id) | Q(finding=finding.pk),
        revoked_at__isnull=True,
        expires_at__gt=now,
        max_tier__lte=finding.tier,
        approval__in=EFFECTIVE_APPROVALS,
    )
    granted = set(grants.filter(user__isnull=False).values_list("user_id", flat=True))
    granted |= set(
        model.groups.through.objects.filter(
            group_id__in=grants.filter(group__isnull=False).values("group_id")
        ).values_list("user_id", flat=True)
    )
    admins = set(model.objects.filter(is_superuser=True).values_list("pk", flat=True))
    readers: list[Reader] = []
    candidates = model.objects.filter(pk__in=team | set(cleared) | granted | admins, is_active=True)
    for user in candidates.order_by("username"):
        # The policy's own branches, less "released to the public" (that one is ``public``).
        if user.is_superuser:
            by_name = Q()
        else:
            others = _clearance_q(user) | _grant_q(user, now)
            by_name = _team_q(user) | (others & _not_retracted())
        if not Finding.objects.filter(by_name, pk=finding.pk).exists():
            continue  # e.g. recused, agreement not accepted, retracted
        if user.pk in team:
            route = "team"
        elif user.is_superuser:
            route = "lab admin"
        elif (
            user.pk in cleared
            and not Recusal.objects.filter(finding=finding, reviewer=user).exists()
        ):
            route = cleared[user.pk]
        else:
            route = "grant"
        readers.append(Reader(user=user, route=route))
    return Audience(
        public=finding.tier == Tier.PUBLIC and not finding.is_retracted, readers=readers
    )


# --- lab administration -----------------------------------------------------------------------


def can_administer_lab(user: Viewer) -> TypeGuard[User]:
    """Create projects and delegate a project's release management: lab admins only."""
    return is_lab_admin(user)


def team_managed_projects(user: Viewer) -> QuerySet[Project]:
    """Projects whose team the user may change: every project for a lab admin; for anyone else
    the projects delegated to them (guardian ``change_project``, directly or through a group).
    Release managers are not included: releasing work is not the same as opening it to people."""
    if is_lab_admin(user):
        return Project.objects.all()
    if not _authenticated(user):
        return Project.objects.none()
    return get_objects_for_user(
        user, "experiments.change_project", Project, accept_global_perms=False
    )


def get_team_managed_project_or_404(user: Viewer, slug: str) -> Project:
    return get_visible_or_404(team_managed_projects(user), slug=slug)


def can_manage_team(user: Viewer, project: Project) -> bool:
    return team_managed_projects(user).filter(pk=project.pk).exists()


def project_delegates(project: Project) -> QuerySet[User]:
    """Users delegated ``change_project`` on ``project`` directly (group delegations are shown
    in the admin)."""
    from disclosure.models import ProjectUserObjectPermission

    ids = ProjectUserObjectPermission.objects.filter(
        content_object=project, permission__codename="change_project"
    ).values("user_id")
    return get_user_model().objects.filter(pk__in=ids).order_by("username")


def manageable_grants(user: Viewer) -> QuerySet[Grant]:
    """Grants the user may see and manage: those covering a project they manage or a finding of
    one (the grants page, the admin and the API all list these)."""
    ids = manageable_projects(user).values("pk")
    return Grant.objects.filter(Q(project__in=ids) | Q(finding__project__in=ids))


# --- separation of duties -------------------------------------------------------------------------


def is_grantee(
    user: Viewer, *, grantee_user: Viewer = None, grantee_group: Group | None = None
) -> bool:
    """``user`` would gain from a grant to ``grantee_user`` / ``grantee_group``: it names them,
    or a group they belong to."""
    if not _authenticated(user):
        return False
    if grantee_user is not None and grantee_user.pk == user.pk:
        return True
    return grantee_group is not None and grantee_group.pk in roles(user).group_ids


def grant_needs_approval(user: Viewer, max_tier: int) -> bool:
    """A grant above the team tier given by a *delegated* manager (guardian ``change_project``,
    not a release manager) waits for a release manager's approval: two people, not one."""
    return max_tier > Tier.TEAM and not is_release_manager(user)


def can_approve_grant(user: Viewer, grant: Grant) -> bool:
    """Approve or decline a pending grant: a release manager other than the grant's giver who
    would not gain from it themselves."""
    return (
        grant.approval == GrantApproval.PENDING
        and grant.revoked_at is None
        and is_release_manager(user)
        and grant.granted_by_id != user.pk
        and not is_grantee(user, grantee_user=grant.user, grantee_group=grant.group)
    )


def can_withdraw_objection(user: Viewer, vote: Vote) -> TypeGuard[User]:
    """An open objection may be withdrawn by its author."""
    return vote.is_open_objection and _authenticated(user) and vote.reviewer_id == user.pk


def can_clear_objection(user: Viewer, vote: Vote, finding: Finding) -> TypeGuard[User]:
    """Vote to clear someone else's open objection: a board member who may review the finding
    (not recused, not on its team) and has not voted to clear it yet. SECURITY: release
    managers have no override; the quorum is counted by
    :func:`disclosure.actions.review.objection_quorum`."""
    return (
        vote.is_open_objection
        and _authenticated(user)
        and vote.reviewer_id != user.pk
        and can_review(user, finding)
        and not _cleared_by(vote, user)
    )


def _cleared_by(vote: Vote, user: User) -> bool:
    """Whether ``user`` already voted to clear ``vote``; reads prefetched ``clearances`` when
    the caller fetched them (the finding page), else asks the database."""
    prefetched = getattr(vote, "_prefetched_objects_cache", {}).get("clearances")
    if prefetched is not None:
        return any(c.reviewer_id == user.pk for c in prefetched)
    return ObjectionClearance.objects.filter(objection=vote, reviewer=user).exists()


def can_schedule_release(user: Viewer, finding: Finding, pending: ReleaseRequest | None) -> bool:
    """Set an embargo on a pending request above the review tier (the step to review needs no
    embargo): release managers and delegated managers of the project."""
    return (
        pending is not None
        and pending.target_tier > Tier.REVIEW
        and can_manage_releases(user, finding.project)
    )


# --- publication: exports and partner copies ------------------------------------------------------


def can_export(user: Viewer, project: Project) -> bool:
    """Export a project's findings (publication bundles, partner copies): release managers, or
    a user delegated release management of the project."""
    return can_manage_releases(user, project)


def exportable_findings(user: Viewer) -> QuerySet[Finding]:
    """Findings the user may put in an export request: visible to them, in projects they
    manage. Whether each may actually leave is decided per finding by the export's blockers."""
    projects = manageable_projects(user)
    return visible_findings(user).filter(project__in=projects.values("pk"))


def partner_copy_findings(recipient: Viewer) -> QuerySet[Finding]:
    """What a partner copy for ``recipient`` may contain: the partner-tier findings their own
    active grants cover, while they have accepted the agreement in force (the grant branch of
    :func:`finding_visibility_q`, not team membership or clearance). SECURITY: a copy leaves
    the platform, so it carries only what was granted to this collaborator."""
    if not _authenticated(recipient):
        return Finding.objects.none()
    q = _grant_q(recipient, timezone.now()) & _not_retracted()
    return Finding.objects.filter(q, tier=Tier.PARTNERS)


def visible_exports(user: Viewer) -> QuerySet[Export]:
    """Exports a user may open: release managers all; others those they requested, and partner
    copies addressed to them (downloads re-check the grant, see :func:`can_download_export`)."""
    from disclosure.models import Export

    if not _authenticated(user):
        return Export.objects.none()
    if is_release_manager(user):
        return Export.objects.all()
    return Export.objects.filter(Q(created_by=user) | Q(recipient=user))


def published_exports() -> QuerySet[Export]:
    """Public bundles anyone may download from the site: built, signed, of the public kind, and
    every finding in them still public and not retracted (a retraction takes its bundles down at
    once; the bundle files stay for the audit)."""
    from disclosure.models import Export, ExportKind, ExportStatus

    withdrawn = Finding.objects.filter(Q(tier__lt=Tier.PUBLIC) | Q(status=FindingStatus.RETRACTED))
    return Export.objects.filter(kind=ExportKind.PUBLIC, status=ExportStatus.SUCCEEDED).exclude(
        findings__in=withdrawn
    )


def get_published_export_or_404(pk: Any, name: str) -> Export:
    return get_visible_or_404(published_exports(), pk=pk, name=name)


def get_export_or_404(user: Viewer, pk: Any) -> Export:
    return get_visible_or_404(visible_exports(user).select_related("recipient"), pk=pk)


def can_download_export(user: Viewer, export: Export) -> bool:
    """A release manager or the requester; a partner copy's recipient only while every finding
    in it is still granted to them (revocation, expiry or a new agreement take effect at once)."""
    if is_release_manager(user) or (_authenticated(user) and export.created_by_id == user.pk):
        return True
    if export.recipient_id is None or export.recipient_id != getattr(user, "pk", None):
        return False
    ids = set(export.findings.values_list("pk", flat=True))
    return ids <= set(partner_copy_findings(user).values_list("pk", flat=True))


# --- revisions ---------------------------------------------------------------------------------


def can_revise_finding(user: Viewer, finding: Finding) -> bool:
    """Edit a finding (in place at the team tier, as a reviewed revision above it): its team."""
    return can_edit_finding(user, finding)


def visible_revisions(user: Viewer, finding: Finding) -> list[FindingRevision]:
    """The revisions of a finding ``user`` can already read, oldest first.

    Those who see the review (team, reviewers who have not recused, release managers) see
    every approved and pending revision. Other readers see the revisions approved while the
    finding was at its current tier, and the one that was current when it got there.
    SECURITY: team-tier drafts are never shown to readers cleared only for a higher tier."""
    from experiments.models import FindingRevision, RevisionState

    rows = FindingRevision.objects.filter(finding=finding).order_by("number")
    if can_see_review(user, finding):
        return list(rows.exclude(state=RevisionState.WITHDRAWN))
    approved = [r for r in rows if r.state == RevisionState.APPROVED]
    before = [r for r in approved if r.tier < finding.tier]
    return before[-1:] + [r for r in approved if r.tier >= finding.tier]


# --- names of findings ------------------------------------------------------------------------


def readable_finding_ids(user: Viewer, ids: Iterable[int | None]) -> set[int]:
    """Which of ``ids`` ``user`` may read now (one query). Every place that names a finding
    outside its own page (audit, inbox, grants, exports, partner copies) asks this at read
    time, so a revoked grant or a retraction hides the name on the next request."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return set()
    return set(visible_findings(user).filter(pk__in=wanted).values_list("pk", flat=True))


# --- accounts ---------------------------------------------------------------------------------


def requires_second_factor(user: Any) -> bool:
    """Whether ``user`` must pass a second factor (TOTP or a recovery code) before reaching
    anything: everyone who can see or release more than their own team's work — the review
    board, release managers, delegated project managers (guardian ``change_project``, directly
    or through a group), staff and superusers. Reads :func:`roles` (one query, shared with
    the rest of the request; none for staff and superusers)."""
    if not _authenticated(user):
        return False
    if user.is_superuser or user.is_staff:
        return True
    mine = roles(user)
    privileged = {settings.H3LAB_REVIEW_BOARD_GROUP, settings.H3LAB_RELEASE_MANAGERS_GROUP}
    return bool(mine.group_names & privileged or mine.delegated_projects)

"""Role groups, their clearance, and release policy v1 (staff edit later versions in the admin).

Policy v1, for each step up:
- to review: decided when the team asks, no approval needed (reviewers must see it to assess)
- to partners: 1 approval; 2 and a 24 h window at moderate uplift; 3 and 72 h at high;
  never at critical
- to public: 2 approvals and a 24 h embargo; 3 and 7 days at moderate; never at high+
"""

from typing import Any

from django.conf import settings
from django.db import migrations

REVIEW, PARTNERS, PUBLIC = 1, 2, 3
NONE, LOW, MODERATE, HIGH, CRITICAL = range(5)

RULES = [
    # target, min_uplift, approvals, embargo hours, requires assessment, blocked
    (REVIEW, NONE, 0, 0, False, False),
    (PARTNERS, NONE, 1, 0, True, False),
    (PARTNERS, MODERATE, 2, 24, True, False),
    (PARTNERS, HIGH, 3, 72, True, False),
    (PARTNERS, CRITICAL, 3, 72, True, True),
    (PUBLIC, NONE, 2, 24, True, False),
    (PUBLIC, MODERATE, 3, 168, True, False),
    (PUBLIC, HIGH, 3, 168, True, True),
]


def forward(apps: Any, schema_editor: Any) -> None:
    Group = apps.get_model("auth", "Group")
    GroupClearance = apps.get_model("disclosure", "GroupClearance")
    ReleasePolicy = apps.get_model("disclosure", "ReleasePolicy")
    ReleaseRule = apps.get_model("disclosure", "ReleaseRule")
    for name in (settings.H3LAB_REVIEW_BOARD_GROUP, settings.H3LAB_RELEASE_MANAGERS_GROUP):
        group, _ = Group.objects.get_or_create(name=name)
        GroupClearance.objects.get_or_create(group=group, defaults={"tier": REVIEW})
    policy, created = ReleasePolicy.objects.get_or_create(
        version=1, defaults={"notes": "Initial policy (migration disclosure.0003)."}
    )
    if created:
        for target, uplift, approvals, hours, assess, blocked in RULES:
            ReleaseRule.objects.create(
                policy=policy,
                target_tier=target,
                min_uplift=uplift,
                approvals_required=approvals,
                min_embargo_hours=hours,
                requires_assessment=assess,
                blocked=blocked,
            )


class Migration(migrations.Migration):
    dependencies = [("disclosure", "0002_audit_append_only"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]

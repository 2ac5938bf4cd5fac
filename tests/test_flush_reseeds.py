"""A flushed database (what a transactional test leaves, or ``manage.py flush``) is a working
lab again: the role groups and release policy v1 that the migrations seed are put back."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.management import call_command

from disclosure.models import ReleasePolicy, ReleaseRule


@pytest.mark.django_db(transaction=True)
def test_a_flushed_database_has_the_seeded_groups_and_policy_again() -> None:
    ReleasePolicy.objects.create(version=2, notes="a later policy")
    call_command("flush", interactive=False, verbosity=0)
    # Everything went, then what migrate seeds came back (and nothing else).
    assert list(ReleasePolicy.objects.values_list("version", flat=True)) == [1]
    assert ReleaseRule.objects.filter(policy__version=1).count() == 8
    names = {settings.H3LAB_REVIEW_BOARD_GROUP, settings.H3LAB_RELEASE_MANAGERS_GROUP}
    assert names <= set(Group.objects.values_list("name", flat=True))

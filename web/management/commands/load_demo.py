"""``manage.py load_demo``: a small, realistic lab to click through (``make run`` calls it).

The lab is built by the apps' demo steps in dependency order — :mod:`experiments.demo` (users,
projects, trained runs, findings), then :mod:`disclosure.demo` (agreement, grants, reviews,
releases) — so the command lives here, above both apps. Idempotent, like each step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from disclosure.demo import load_disclosure_demo
from experiments.demo import COMMITTING_STEPS, Demo, persona_table, train_runs
from experiments.demo import STEPS as EXPERIMENTS_STEPS
from h3lab.demobundle import BundleError

STEPS: list[Callable[[Demo], None]] = [*EXPERIMENTS_STEPS, load_disclosure_demo]


class Command(BaseCommand):
    help = (
        "Load a small demo lab (users for every role, two projects, runs imported from the demo "
        "bundle and trained live, analyses, findings)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-train",
            action="store_true",
            help="skip the live training runs (fast); bundled runs and analyses are still made",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        demo = Demo(log=lambda msg: self.stdout.write(msg))
        started = time.monotonic()
        try:
            for step in STEPS:
                if options["no_train"] and step is train_runs:
                    continue
                if step in COMMITTING_STEPS:
                    step(demo)  # each run commits as it goes, as on a worker
                else:
                    with transaction.atomic():
                        step(demo)
        except BundleError as exc:  # a damaged or edited bundle: nothing of it was imported
            raise CommandError(str(exc)) from exc
        elapsed = time.monotonic() - started
        self.stdout.write(self.style.SUCCESS(f"\nDemo lab ready ({elapsed:.0f} s). Sign in as:"))
        self.stdout.write(persona_table())
        self.stdout.write(
            "\nReviewers, release managers and the admin set up a second factor (any TOTP "
            "authenticator app) at their first login, as in a real lab; see README, "
            '"Accounts and MFA".'
        )

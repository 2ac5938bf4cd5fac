"""Signals the experiments app sends so that apps built on it (disclosure's audit log,
notifications) can observe governed changes without experiments importing them."""

from django.dispatch import Signal

# Sent by every action that changes governed state, inside its transaction.
# kwargs: actor (User | None), action (str, e.g. "run.submit"), obj (Model),
#         old (dict | None), new (dict | None)
governed_change = Signal()

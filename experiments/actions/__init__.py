"""Every governed state change of the experiments app, one module per noun (projects, runs,
the worker protocol, artifacts, findings).

``do_*`` functions perform a change inside a transaction and announce it on
:data:`experiments.signals.governed_change` (the audit log listens); ``check_*`` functions
validate input first. Views, admin actions, commands and Celery tasks call these; nothing else
saves governed rows.

Run state moves only by *conditional* updates (``UPDATE … WHERE status = …``): a duplicate
delivery of a job, a worker that lost its claim, or a cancel racing a completion each find no
matching row and change nothing.
"""

"""Every governed state change of the disclosure app, one module per noun.

``do_*`` functions perform one change inside a transaction and append its audit entry;
``check_*`` functions validate input, raising :class:`ValidationError`, then call the ``do_*``.
Views, admin actions, management commands and Celery tasks call these; nothing else saves
disclosure rows or moves a finding's tier. Time comes from :func:`django.utils.timezone.now`.
Read-only release gates live in :mod:`disclosure.gates`.
"""

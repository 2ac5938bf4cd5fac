"""The site's run pages and the admin of the experiments app.

They sit above both apps: every page asks :mod:`disclosure.policy` what the viewer may see,
and ``experiments`` must not import ``disclosure`` (the direction test guards it). The
finding and publication pages live in :mod:`disclosure`; the REST API in :mod:`api`.
"""

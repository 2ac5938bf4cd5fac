"""Publication bundles and partner copies.

- :mod:`disclosure.exports.rules` — what may leave: the blockers, :class:`ExportRefused`
  (read-only).
- :mod:`disclosure.exports.formats` — the content files: findings as Markdown and JSON,
  evidence, metrics, RO-Crate, CITATION.cff, recipient-marked for a partner copy.
- :mod:`disclosure.exports.build` — the build job's body, the archive's storage (encrypted for a
  partner copy) and its opening for download.

The governed steps — requesting an export, recording a download — are in
:mod:`disclosure.actions.exports`; the marks themselves in :mod:`disclosure.marks`; the Celery
task in :mod:`h3lab.jobs`.
"""

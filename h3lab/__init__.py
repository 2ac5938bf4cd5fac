"""h3lab: staged disclosure of interpretability results, and the H3 models they come from.

The Django project wiring (settings, urls, celery app) lives beside the ML core
(``h3lab.nn``, ``h3lab.data``, ``h3lab.train`` …), which never imports Django.
"""

"""h3lab: staged disclosure of interpretability results, and the H3 models they come from.

The Django project wiring (settings, urls, celery app) lives beside the ML core
(``h3lab.nn``, ``h3lab.data``, ``h3lab.train`` …), which never imports Django.
"""

# The one place the version is written: pyproject.toml reads it (setuptools' attr), the two
# command lines print it (`h3lab --version`, `h3lab-client --version`), CHANGELOG.md names it.
__version__ = "0.1.0"

from django.apps import AppConfig


class H3LabConfig(AppConfig):
    """Project-level checks (the ML core itself is not a Django app)."""

    name = "h3lab"
    label = "h3lab"
    verbose_name = "h3lab"

    def ready(self) -> None:
        from h3lab import checks  # noqa: F401  (registers system checks)

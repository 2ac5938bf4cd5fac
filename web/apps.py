from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "web"
    verbose_name = "Site pages"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from web import startup  # noqa: F401  (registers the master-key check, h3lab.E012)
        from web.accounts import note_second_factor_at_login

        user_logged_in.connect(note_second_factor_at_login, dispatch_uid="web.second_factor")

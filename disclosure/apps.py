from django.apps import AppConfig


class DisclosureConfig(AppConfig):
    name = "disclosure"
    default_auto_field = "django.db.models.BigAutoField"

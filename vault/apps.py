from django.apps import AppConfig


class VaultConfig(AppConfig):
    """Only for :class:`vault.models.MasterKeyRecord`; the crypto itself needs no Django."""

    name = "vault"
    verbose_name = "Master keys"
    default_auto_field = "django.db.models.BigAutoField"

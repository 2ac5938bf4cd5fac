from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from web import accounts

# A database outage answers 503 (page or JSON), anything else Django's 500 (web/errors.py).
handler500 = "web.errors.server_error"

urlpatterns = [
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Password change and reset: Django's views, templates in templates/registration/.
    path(
        "accounts/password/change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password/change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("accounts/password/reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
    path(
        "accounts/password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "accounts/password/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    # Second factor (web/accounts.py).
    path("accounts/2fa/enrol/", accounts.mfa_enrol, name="mfa-enrol"),
    path("accounts/2fa/verify/", accounts.mfa_verify, name="mfa-verify"),
    path("accounts/2fa/recovery-codes/", accounts.mfa_recovery_codes, name="mfa-recovery-codes"),
    path("admin/", admin.site.urls),
    path("", include("api.urls")),
    path("", include("disclosure.urls")),
    path("", include("web.urls")),
]

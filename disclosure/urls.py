from django.urls import path

from disclosure import publication_views as pub
from disclosure import revision_views, views

urlpatterns = [
    path("findings/", views.finding_list, name="findings"),
    path("findings/<int:pk>/", views.finding_detail, name="finding"),
    path("findings/<int:pk>/audience/", views.finding_audience, name="finding-audience"),
    path(
        "findings/<int:pk>/request-review/",
        views.finding_request_review,
        name="finding-request-review",
    ),
    path(
        "findings/<int:pk>/request-release/",
        views.finding_request_release,
        name="finding-request-release",
    ),
    path("findings/<int:pk>/edit/", revision_views.finding_edit, name="finding-edit"),
    path(
        "findings/<int:pk>/revision/withdraw/",
        revision_views.revision_withdraw,
        name="finding-revision-withdraw",
    ),
    path("findings/<int:pk>/assess/", views.finding_assess, name="finding-assess"),
    path("findings/<int:pk>/vote/", views.finding_vote, name="finding-vote"),
    path("findings/<int:pk>/recuse/", views.finding_recuse, name="finding-recuse"),
    path("findings/<int:pk>/schedule/", views.finding_schedule, name="finding-schedule"),
    path("findings/<int:pk>/retract/", views.finding_retract, name="finding-retract"),
    path("objections/<int:pk>/withdraw/", views.objection_withdraw, name="objection-withdraw"),
    path("objections/<int:pk>/clear/", views.objection_clear, name="objection-clear"),
    path("review/", views.review_queue, name="review-queue"),
    path("grants/", views.grant_list, name="grants"),
    path("grants/<int:pk>/revoke/", views.grant_revoke, name="grant-revoke"),
    path("grants/<int:pk>/approve/", views.grant_approve, name="grant-approve"),
    path("access/", views.my_access, name="my-access"),
    path("access/accept/", views.agreement_accept, name="agreement-accept"),
    path("inbox/", views.inbox, name="inbox"),
    path("audit/", views.audit_log, name="audit"),
    path("audit/export.csv", views.audit_export, name="audit-export"),
    # publication (issue 5)
    path("publications/", pub.publications, name="publications"),
    path(
        "publications/<int:pk>/<slug:name>.tar.gz",
        pub.publication_download,
        name="publication-download",
    ),
    path("keys/", pub.key_list, name="keys"),
    path("keys/<slug:key_id>.pem", pub.key_pem, name="key-pem"),
    path(".well-known/h3lab-keys.json", pub.keys_json, name="keys-json"),
    path("exports/", pub.export_list, name="exports"),
    path("exports/new/public/", pub.export_public, name="export-public"),
    path("exports/new/partner/", pub.export_partner, name="export-partner"),
    path("exports/<int:pk>/", pub.export_detail, name="export"),
    path("exports/<int:pk>/progress.json", pub.export_progress, name="export-progress"),
    path("exports/<int:pk>/download/", pub.export_download, name="export-download"),
]

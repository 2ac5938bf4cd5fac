from django.urls import path

from web import lab, views

urlpatterns = [
    path("", views.home, name="home"),
    path("lab/", lab.lab, name="lab"),
    path("projects/<slug:slug>/", views.project_detail, name="project"),
    path("projects/<slug:slug>/team/", lab.project_team, name="project-team"),
    path("projects/<slug:slug>/runs/new/", views.run_new, name="run-new"),
    path("runs/", views.run_list, name="runs"),
    path("runs/compare/", views.run_compare, name="runs-compare"),
    path("runs/compare/series.json", views.run_compare_series, name="runs-compare-series"),
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("runs/<int:pk>/progress.json", views.run_progress, name="run-progress"),
    path("runs/<int:pk>/series.json", views.run_series, name="run-series"),
    path("runs/<int:pk>/log.json", views.run_log, name="run-log"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:pk>/rerun/", views.run_rerun, name="run-rerun"),
    path("runs/<int:pk>/analyses/", views.run_analyse, name="run-analyse"),
    path("runs/<int:pk>/findings/new/", views.finding_new, name="finding-new"),
    path("artifacts/<int:pk>/download/", views.artifact_download, name="artifact-download"),
]

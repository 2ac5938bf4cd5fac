from django.urls import path

from experiments import views

urlpatterns = [
    path("", views.home, name="home"),
]

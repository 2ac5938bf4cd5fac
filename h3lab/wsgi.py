import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "h3lab.settings")
application = get_wsgi_application()

from web.startup import check_web_start  # noqa: E402

check_web_start()  # refuse to serve on a master key this deployment's data was not encrypted with

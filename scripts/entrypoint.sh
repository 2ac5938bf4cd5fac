#!/bin/sh
# The image's entrypoint. Every role checks the deployment first (`check --deploy` at WARNING:
# a missing or development SECRET_KEY, no master key, insecure cookies or TLS settings stop
# the container here, with the reason in its log). The web role then migrates, collects
# static files and serves; other roles (celery worker, celery beat) exec their command.
#
#   entrypoint.sh web                  # the default CMD
#   entrypoint.sh celery -A h3lab.celery worker ...
set -eu

# DEPLOY_CHECK_FAIL_LEVEL=ERROR only to try the stack over plain HTTP (see compose.yaml).
python manage.py check --deploy --fail-level "${DEPLOY_CHECK_FAIL_LEVEL:-WARNING}"

if [ "${1:-web}" = "migrate" ]; then  # compose's one-shot service, as the database owner role
    exec python manage.py migrate --noinput
fi
if [ "${1:-web}" = "web" ]; then
    if [ "${H3LAB_MIGRATE_ON_START:-1}" = "1" ]; then
        python manage.py migrate --noinput
    fi
    python manage.py collectstatic --noinput
    # Threaded workers, timeouts, logging: gunicorn.conf.py (settings from the environment).
    exec gunicorn --config gunicorn.conf.py h3lab.wsgi
fi
exec "$@"

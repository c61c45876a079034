# One image for every bookrender service (web, worker, beat, Flower, migrations) and the ComfyUI
# simulator; each Compose service sets only its command (docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DJANGO_SETTINGS_MODULE=config.settings \
    BOOKRENDER_VAR_DIR=/data

# An unprivileged user with a fixed id, so that volumes keep their owner across rebuilds.
RUN groupadd --system --gid 10001 bookrender \
 && useradd --system --uid 10001 --gid bookrender --home-dir /app --shell /usr/sbin/nologin bookrender \
 && install -d -o bookrender -g bookrender /data

WORKDIR /app

# The pinned dependencies from pyproject.toml first: a code change rebuilds only the layers below.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY . .
# The admin's CSS and JS, served by the web app itself (WhiteNoise).
RUN python manage.py collectstatic --noinput --verbosity 0

USER bookrender
EXPOSE 8000 5555 8188
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--log-config-json", "ops/services/gunicorn-logging.json"]

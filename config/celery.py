from __future__ import annotations

import os

from celery import Celery
from celery.signals import task_prerun, worker_init

from renders.worker_gate import HealthGate

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("bookrender")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Workers take render work only while one of their ComfyUI instances answers.
app.steps["worker"].add(HealthGate)


@worker_init.connect
def _refuse_bad_configuration(**_: object) -> None:
    """Workers do not run Django's checks by themselves; a malformed setting must stop them too."""
    from django.core import checks

    errors = [m for m in checks.run_checks() if m.level >= checks.ERROR]
    if errors:
        raise SystemExit("bookrender: bad configuration:\n" + "\n".join(str(m) for m in errors))


@task_prerun.connect
def _database_connection_checked(**_: object) -> None:
    """What Django does at the start of each web request: drop a connection that is too old or
    broken (a restarted PostgreSQL, a killed backend) so the task starts on a good one. Celery
    keeps connections between tasks because CELERY_DB_REUSE_MAX is set."""
    from django.db import close_old_connections

    close_old_connections()

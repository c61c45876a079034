from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

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

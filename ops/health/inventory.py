"""What should be running: the ComfyUI instances bookrender renders on, and this host's ComfyUI
setup from /etc/default/comfyui (ops/default/comfyui; its CUI_* variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from renders.gpu import LOCAL_HOSTS, local_gpu_index
from renders.models import ComfyInstance

DEFAULT_DATA_DIR = Path("/var/lib/comfyui")


@dataclass(frozen=True)
class Instance:
    url: str
    gpu_index: int | None  # on this host (port 8188 + index); None when it runs elsewhere

    @property
    def name(self) -> str:
        return f"comfyui@{self.gpu_index}" if self.gpu_index is not None else f"comfyui {self.url}"

    @property
    def unit(self) -> str | None:
        return f"comfyui@{self.gpu_index}.service" if self.gpu_index is not None else None


@dataclass(frozen=True)
class Host:
    gpus: list[int] | None  # CUI_GPUS; None when this host is not set up with ops/install.sh
    models_dir: Path | None  # CUI_MODELS_DIR (or bookrender's BOOKRENDER_MODEL_DIR), the model storage
    data_dir: Path  # CUI_DATA_DIR, ComfyUI's --base-directory

    @property
    def managed(self) -> bool:
        return self.gpus is not None


def configured_instances() -> list[Instance]:
    """The instances bookrender renders on: the enabled ComfyInstance rows, and the COMFYUI_URLS
    that have none yet (routing adds their rows when it first runs; the checks only read). When
    the database does not answer, COMFYUI_URLS alone: the checks must work without it."""
    urls = list(settings.COMFYUI_URLS)
    try:
        rows = list(ComfyInstance.objects.values_list("url", "enabled", "gpu_index"))
    except Exception:  # no database, or not allowed to use it (a check reports that separately)
        rows = []
    disabled = {url for url, enabled, _ in rows if not enabled}
    urls += [url for url, enabled, _ in rows if enabled and url not in urls]
    # The GPU index is the instance record's (the admin's); a ComfyUI on a port other than
    # 8188 + index keeps its GPU. Without a record, the port says it (README: 8188 + index).
    recorded = {url: index for url, _, index in rows if index is not None}
    return [Instance(url=url, gpu_index=_gpu_index(url, recorded.get(url))) for url in urls if url not in disabled]


def _gpu_index(url: str, recorded: int | None) -> int | None:
    """The index on this host, or None when the instance runs elsewhere."""
    if recorded is not None and urlsplit(url).hostname in LOCAL_HOSTS:
        return recorded
    return local_gpu_index(url)


def host_config() -> Host:
    gpus = os.environ.get("CUI_GPUS")
    models = os.environ.get("CUI_MODELS_DIR", "").strip() or settings.BOOKRENDER_MODEL_DIR
    return Host(
        gpus=None if gpus is None else [int(item) for item in gpus.replace(",", " ").split()],
        models_dir=Path(models) if models else None,
        data_dir=Path(os.environ.get("CUI_DATA_DIR", "").strip() or DEFAULT_DATA_DIR),
    )

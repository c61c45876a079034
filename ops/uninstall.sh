#!/usr/bin/env bash
# The rollback of ops/install.sh: stops and disables every unit it enabled and removes the files
# it installed. Data (/var/lib/bookrender, /var/lib/comfyui, the database), logs and the model
# storage are never touched; env files and users stay unless --purge.
#
#   sudo ops/uninstall.sh --dry-run    # print every action it would take; change nothing
#   sudo ops/uninstall.sh              # roll back
#   sudo ops/uninstall.sh --purge      # also remove /etc/bookrender, /etc/default/comfyui{,-asset-sync} and the users
#   ops/uninstall.sh --root /tmp/stage # remove what install.sh --root put there
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DRY_RUN=0
PURGE=0
ROOT=""

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --purge) PURGE=1 ;;
    --root) ROOT="${2:?--root needs a folder}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "uninstall.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "uninstall.sh: run it as root (or try --dry-run first)" >&2
  exit 1
fi

SYSTEMD_DIR="$ROOT/etc/systemd/system"
LOG_DIR="$ROOT/var/log/comfyui"

act() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "would run: $*"
    return 0
  fi
  echo "run: $*"
  "$@"
  if [ -d "$LOG_DIR" ]; then
    printf '{"ts": "%s", "event": "uninstall", "run": "%s"}\n' "$(date -u +%FT%TZ)" "${*//\"/\\\"}" >>"$LOG_DIR/env-setup.log"
  fi
}

system() {
  if [ -n "$ROOT" ]; then
    echo "skipped under --root: $*"
  else
    act "$@"
  fi
}

# --- 1. stop and disable, timers first so that nothing restarts what is being stopped ---------------
units=(comfyui-monitor.timer comfyui-repair.timer comfyui-logrotate.timer comfyui-asset-sync.timer bookrender.target)
for link in "$SYSTEMD_DIR"/bookrender.target.wants/bookrender-worker@*.service \
            "$SYSTEMD_DIR"/multi-user.target.wants/comfyui@*.service; do
  if [ -L "$link" ]; then
    units+=("$(basename "$link")")
  fi
done
units+=(bookrender-web.service bookrender-maintenance.service bookrender-beat.service bookrender-flower.service bookrender-health.service bookrender-migrate.service)
system systemctl disable --now "${units[@]}"

# --- 2. the files install.sh put in place ---------------------------------------------------------
for unit in "$HERE"/services/*.service "$HERE"/services/*.timer "$HERE"/services/*.target; do
  target="$SYSTEMD_DIR/$(basename "$unit")"
  if [ -e "$target" ]; then
    act rm -f "$target"
  fi
done
for file in "$ROOT/etc/bookrender/logrotate/comfyui" \
            "$ROOT/etc/polkit-1/rules.d/50-bookrender-repair.rules" \
            "$ROOT/etc/modules-load.d/comfyui.conf"; do
  if [ -e "$file" ]; then
    act rm -f "$file"
  fi
done
system systemctl daemon-reload
system systemctl reset-failed

# --- 3. --purge: configuration and users --------------------------------------------------------
if [ "$PURGE" = 1 ]; then
  if [ -e "$ROOT/etc/bookrender" ]; then
    act rm -rf "$ROOT/etc/bookrender"
  fi
  for name in comfyui comfyui-asset-sync; do
    if [ -e "$ROOT/etc/default/$name" ]; then
      act rm -f "$ROOT/etc/default/$name"
    fi
  done
  for user in bookrender comfyui comfyui-repair; do
    if getent passwd "$user" >/dev/null; then
      system userdel "$user"
    fi
  done
else
  echo "kept /etc/bookrender, /etc/default/comfyui and /etc/default/comfyui-asset-sync and the users (--purge removes them)"
fi
echo "kept data and logs: /var/lib/bookrender, /var/lib/comfyui, /var/log/comfyui, the model storage"
echo "done$([ "$DRY_RUN" = 1 ] && echo ' (dry run: nothing was changed)')"

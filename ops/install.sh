#!/usr/bin/env bash
# Installs bookrender's and ComfyUI's systemd units, their env files, the logrotate config, the
# polkit rule for auto-repair and the two service users on a GPU host. ops/uninstall.sh undoes it.
#
#   sudo ops/install.sh --dry-run      # print every action it would take; change nothing
#   sudo ops/install.sh                # do it, then enable and start everything
#   sudo ops/install.sh --no-start     # do it, enable nothing
#   ops/install.sh --root /tmp/stage   # install the files under another root (no users, no systemctl)
#
# It expects the app in /opt/bookrender (with its virtual environment in .venv) and ComfyUI
# installed by python -m ops.comfyui under /opt/comfyui (CUI_HOME), as the units do. Existing env files are never overwritten; units, the logrotate
# config and the polkit rule always are (local changes belong in drop-ins: systemctl edit UNIT).
# Every action is appended to /var/log/comfyui/env-setup.log.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DRY_RUN=0
START=1
ROOT=""

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --no-start) START=0 ;;
    --root) ROOT="${2:?--root needs a folder}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run it as root (or try --dry-run first)" >&2
  exit 1
fi

SYSTEMD_DIR="$ROOT/etc/systemd/system"
LOG_DIR="$ROOT/var/log/comfyui"
APP_DIR="$ROOT/opt/bookrender"  # where the units run bookrender from
SETUP_LOG="$LOG_DIR/env-setup.log"

# A JSON string's inside: backslashes, quotes and every control character escaped.
json_escape() {
  local text="$1" code char
  text="${text//\\/\\\\}"
  text="${text//\"/\\\"}"
  text="${text//$'\n'/\\n}"
  text="${text//$'\t'/\\t}"
  text="${text//$'\r'/\\r}"
  for code in $(seq 1 31) 127; do
    printf -v char "\\$(printf '%03o' "$code")"
    if [[ "$text" == *"$char"* ]]; then
      text="${text//"$char"/$(printf '\\u%04x' "$code")}"
    fi
  done
  printf '%s' "$text"
}

# Every change goes through act: printed in a dry run, run and logged otherwise.
act() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "would run: $*"
    return 0
  fi
  echo "run: $*"
  "$@"
  if [ -d "$LOG_DIR" ]; then
    printf '{"ts": "%s", "event": "install", "run": "%s"}\n' "$(date -u +%FT%TZ)" "$(json_escape "$*")" >>"$SETUP_LOG"
  fi
}

# env_value FILE NAME: NAME's value in an env file (NAME=value, optionally quoted), read as text.
# Never sourced: the file must not run commands as root or change this script's own variables.
env_value() {
  local file="$1" name="$2" line value=""
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "$name="*) value="${line#"$name="}" ;;
    esac
  done <"$file"
  case "$value" in
    \"*\") value="${value:1:${#value}-2}" ;;
    \'*\') value="${value:1:${#value}-2}" ;;
  esac
  printf '%s' "$value"
}

note() { echo "$*"; }

# Users, ownership and systemctl only make sense on the real root.
system() {
  if [ -n "$ROOT" ]; then
    echo "skipped under --root: $*"
  else
    act "$@"
  fi
}

owner() {  # owner USER:GROUP PATH...: chown, except under --root
  local who="$1"; shift
  system chown "$who" "$@"
}

# --- 1. users ---------------------------------------------------------------------------------
# comfyui-repair runs auto-repair: the only user the polkit rule lets restart units.
for user in bookrender comfyui comfyui-repair; do
  if getent passwd "$user" >/dev/null; then
    note "user $user exists"
  else
    home=/var/lib/$user
    system useradd --system --user-group --home-dir "$home" --no-create-home --shell /usr/sbin/nologin "$user"
  fi
done
# Where the NVIDIA device nodes are group-restricted, the group is "video".
if getent group video >/dev/null; then
  system usermod --append --groups video comfyui
fi

# --- 2. folders -------------------------------------------------------------------------------
act install -d -m 0755 "$ROOT/etc/default" "$SYSTEMD_DIR"
act install -d -m 0750 "$ROOT/etc/bookrender" "$ROOT/etc/bookrender/logrotate"
owner root:bookrender "$ROOT/etc/bookrender"
act install -d -m 0750 "$LOG_DIR"
owner bookrender:bookrender "$LOG_DIR"
# ComfyUI's data (the units' StateDirectory), group-writable for comfyui-repair (group comfyui);
# setgid so that what ComfyUI creates stays in the group.
for sub in "" models custom_nodes input output temp user; do
  act install -d -m 2770 "$ROOT/var/lib/comfyui/$sub"
done
owner comfyui:comfyui "$ROOT/var/lib/comfyui" "$ROOT/var/lib/comfyui/"{models,custom_nodes,input,output,temp,user}

# --- 3. env files (never overwritten) ------------------------------------------------------------
if [ -e "$ROOT/etc/bookrender/bookrender.env" ]; then
  note "kept $ROOT/etc/bookrender/bookrender.env"
else
  # 0640: it holds DJANGO_SECRET_KEY and the database password.
  act install -m 0640 "$HERE/default/bookrender.env" "$ROOT/etc/bookrender/bookrender.env"
  owner root:bookrender "$ROOT/etc/bookrender/bookrender.env"
  note "edit $ROOT/etc/bookrender/bookrender.env (secret key, hosts, database) before starting"
fi
for name in comfyui comfyui-asset-sync; do
  if [ -e "$ROOT/etc/default/$name" ]; then
    note "kept $ROOT/etc/default/$name"
  else
    act install -m 0644 "$HERE/default/$name" "$ROOT/etc/default/$name"
  fi
done

# The admin's CSS and JS, served by the web app itself (WhiteNoise) from /opt/bookrender/staticfiles.
if [ -x "$APP_DIR/.venv/bin/python" ]; then
  act env DJANGO_SETTINGS_MODULE=config.settings "$APP_DIR/.venv/bin/python" "$APP_DIR/manage.py" collectstatic --noinput --verbosity 0
else
  note "no $APP_DIR/.venv yet: run manage.py collectstatic after installing bookrender there"
fi

# --- 4. units, logrotate, polkit, kernel modules ---------------------------------------------------
for unit in "$HERE"/services/*.service "$HERE"/services/*.timer "$HERE"/services/*.target; do
  act install -m 0644 "$unit" "$SYSTEMD_DIR/$(basename "$unit")"
done
act install -m 0644 "$HERE/logrotate/comfyui" "$ROOT/etc/bookrender/logrotate/comfyui"
if [ -d "$ROOT/etc/polkit-1" ] || [ -n "$ROOT" ]; then
  act install -d -m 0755 "$ROOT/etc/polkit-1/rules.d"
  act install -m 0644 "$HERE/repair/50-bookrender-repair.rules" "$ROOT/etc/polkit-1/rules.d/50-bookrender-repair.rules"
else
  note "no polkit on this host: auto-repair will not be allowed to restart units (apt install polkitd)"
fi
# systemd resolves comfyui@'s DeviceAllow=char-nvidia* when a unit starts: load nvidia-uvm at boot.
act install -d -m 0755 "$ROOT/etc/modules-load.d"
act install -m 0644 "$HERE/modules-load/comfyui.conf" "$ROOT/etc/modules-load.d/comfyui.conf"

# --- 5. model links: /var/lib/comfyui/models/<kind> -> $CUI_MODELS_DIR/<kind> ---------------------
CUI_GPUS="0"
CUI_MODELS_DIR=""
for file in "$ROOT/etc/default/comfyui" "$HERE/default/comfyui"; do
  if [ -r "$file" ]; then
    CUI_GPUS="$(env_value "$file" CUI_GPUS)"
    CUI_MODELS_DIR="$(env_value "$file" CUI_MODELS_DIR)"
    break
  fi
done
if ! [[ "$CUI_GPUS" =~ ^[0-9]+( [0-9]+)*$ ]]; then
  echo "install.sh: CUI_GPUS=\"$CUI_GPUS\" in $file: expected GPU indexes separated by spaces, like \"0 1\"" >&2
  exit 1
fi
if [ -n "$CUI_MODELS_DIR" ] && ! [[ "$CUI_MODELS_DIR" =~ ^/[A-Za-z0-9._/-]*$ ]]; then
  echo "install.sh: CUI_MODELS_DIR=\"$CUI_MODELS_DIR\" in $file: expected an absolute path" >&2
  exit 1
fi
if [ -n "$CUI_MODELS_DIR" ] && [ -d "$ROOT$CUI_MODELS_DIR" ]; then
  for kind in "$ROOT$CUI_MODELS_DIR"/*/; do
    name="$(basename "$kind")"
    link="$ROOT/var/lib/comfyui/models/$name"
    if [ -e "$link" ] || [ -L "$link" ]; then
      note "kept $link"
    else
      act ln -s "$CUI_MODELS_DIR/$name" "$link"
    fi
  done
else
  note "model storage ${CUI_MODELS_DIR:-(CUI_MODELS_DIR unset)} not found: link models later (auto-repair re-links broken ones)"
fi

# --- 6. systemd ------------------------------------------------------------------------------------
if [ ! -x "$ROOT/opt/bookrender/.venv/bin/gunicorn" ]; then
  note "warning: /opt/bookrender/.venv/bin/gunicorn is missing: install the app first (README, Operations)"
fi
system systemctl daemon-reload
if [ "$START" = 1 ]; then
  # Order is the units' business (After=/Requires=); this only says what should run.
  units=(bookrender.target bookrender-web.service bookrender-maintenance.service bookrender-beat.service bookrender-flower.service bookrender-health.service)
  for gpu in $CUI_GPUS; do
    units+=("comfyui@$gpu.service" "bookrender-worker@$gpu.service")
  done
  units+=(comfyui-monitor.timer comfyui-repair.timer comfyui-logrotate.timer)
  # A host in a fleet (it holds the fleet's secret) applies the fleet's asset bundle on a timer.
  if [ -e "$ROOT/etc/bookrender/fleet-secret" ]; then
    units+=(comfyui-asset-sync.timer)
  else
    note "no $ROOT/etc/bookrender/fleet-secret: not in a fleet, comfyui-asset-sync.timer not enabled"
  fi
  system systemctl enable --now "${units[@]}"
else
  note "not enabling anything (--no-start); see README, Operations, for the list"
fi
note "done$([ "$DRY_RUN" = 1 ] && echo ' (dry run: nothing was changed)')"

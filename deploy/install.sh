#!/usr/bin/env bash
# Install or upgrade prebookd on a Debian/Ubuntu VPS with systemd. Idempotent: run it
# again after `git pull` to upgrade. See deploy/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: sudo deploy/install.sh [options]

Install (or upgrade) prebookd as a systemd service:
  - the system user `prebookd` (no login, home /var/lib/prebookd)
  - a virtualenv in PREFIX/venv with prebookd installed from SOURCE
  - PREFIX/deploy: this guide, the role SQL and the env example
  - /etc/systemd/system/prebookd.service (from SOURCE/prebookd.service)
  - /etc/prebookd/prebookd.env from the example, only if it does not exist yet
    (root:prebookd, mode 0640; an existing file keeps its contents)
  - `prebookd migrate`, run as the service would be (user, env file, state directory)
  - systemctl enable, then start (or restart, when it was running)

Options:
  --source DIR        prebookd checkout to install (default: the one holding this script)
  --prefix DIR        install root (default: /opt/prebookd)
  --python PATH       Python 3.11 or newer for the virtualenv (default: python3)
  --migrate-env FILE  env file whose PREBOOKD_DATABASE_URL names the role that OWNS the
                      tables, used for `prebookd migrate` only (when the daemon connects
                      as the least-privilege role of deploy/prebookd-role.sql)
  --no-migrate        skip `prebookd migrate`
  --no-start          install and enable, but do not start or restart
  -h, --help          show this help
EOF
}

SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/prebookd
PYTHON=python3
MIGRATE_ENV=""
DO_MIGRATE=1
DO_START=1
UNIT_PATH=/etc/systemd/system/prebookd.service
ENV_DIR=/etc/prebookd
ENV_FILE="$ENV_DIR/prebookd.env"
SERVICE_USER=prebookd

while [ "$#" -gt 0 ]; do
    case "$1" in
    --source) SOURCE="$(cd "${2:?--source needs a directory}" && pwd)"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs a path}"; shift 2 ;;
    --migrate-env) MIGRATE_ENV="${2:?--migrate-env needs a file}"; shift 2 ;;
    --no-migrate) DO_MIGRATE=0; shift ;;
    --no-start) DO_START=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

step() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo): it creates a user, a unit and /etc/prebookd"
command -v systemctl >/dev/null || die "systemd is required (systemctl not found)"
if [ ! -f "$SOURCE/pyproject.toml" ] || [ ! -f "$SOURCE/prebookd.service" ]; then
    die "$SOURCE is not a prebookd checkout (no pyproject.toml / prebookd.service)"
fi
case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$MIGRATE_ENV" ]; then
    [ -r "$MIGRATE_ENV" ] || die "cannot read --migrate-env file $MIGRATE_ENV"
    MIGRATE_ENV="$(cd "$(dirname "$MIGRATE_ENV")" && pwd)/$(basename "$MIGRATE_ENV")"
fi

# ---- Python ------------------------------------------------------------------------
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    command -v apt-get >/dev/null || die "$PYTHON with venv is missing and apt-get is not here"
    step "installing python3 and python3-venv (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "prebookd needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1) (use --python)"

# ---- the service user --------------------------------------------------------------
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    step "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir /var/lib/prebookd --no-create-home \
        --shell /usr/sbin/nologin --comment "prebookd daemon" "$SERVICE_USER"
fi

# ---- code ----------------------------------------------------------------------------
step "installing prebookd from $SOURCE into $PREFIX/venv"
install -d -m 0755 "$PREFIX"
if [ ! -x "$PREFIX/venv/bin/python" ]; then
    "$PYTHON" -m venv "$PREFIX/venv"
fi
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
# A plain (not editable) install: the service never runs code from the checkout.
# Dependencies at the versions CI tested (deploy/constraints.txt), also on upgrade.
# --force-reinstall --no-deps afterwards: a local directory with an unchanged version
# number must still replace the installed copy on upgrade.
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check \
    -c "$SOURCE/deploy/constraints.txt" "$SOURCE"
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    --force-reinstall "$SOURCE"
install -d -m 0755 "$PREFIX/deploy"
install -m 0644 "$SOURCE/deploy/README.md" "$SOURCE/deploy/prebookd-role.sql" \
    "$SOURCE/deploy/prebookd.env.example" "$PREFIX/deploy/"
"$PREFIX/venv/bin/prebookd" --version

# ---- unit ------------------------------------------------------------------------------
step "installing $UNIT_PATH"
tmp_unit="$(mktemp)"
trap 'rm -f "$tmp_unit"' EXIT
sed -e "s#/opt/prebookd/#$PREFIX/#g" "$SOURCE/prebookd.service" >"$tmp_unit"
install -m 0644 "$tmp_unit" "$UNIT_PATH"
systemctl daemon-reload

# ---- settings --------------------------------------------------------------------------
install -d -m 0750 -o root -g "$SERVICE_USER" "$ENV_DIR"
if [ ! -e "$ENV_FILE" ]; then
    step "creating $ENV_FILE from the example (edit it, then: systemctl restart prebookd)"
    install -m 0640 -o root -g "$SERVICE_USER" "$SOURCE/deploy/prebookd.env.example" "$ENV_FILE"
else
    step "keeping $ENV_FILE as it is (compare with $PREFIX/deploy/prebookd.env.example)"
    # It may hold a password: whatever happened to it, only root and the service read it.
    chown root:"$SERVICE_USER" "$ENV_FILE"
    chmod 0640 "$ENV_FILE"
fi

# ---- schema ----------------------------------------------------------------------------
if [ "$DO_MIGRATE" -eq 1 ]; then
    step "prebookd migrate (as the service: user $SERVICE_USER, $ENV_FILE)"
    # A transient unit gives the same user, environment and state directory as the
    # service, so the embedded Postgres (no PREBOOKD_DATABASE_URL) is the same one.
    # A second EnvironmentFile overrides the first: the owner's DSN for migrations.
    migrate_props=(
        --property=User="$SERVICE_USER" --property=Group="$SERVICE_USER"
        --property=StateDirectory=prebookd --property=UMask=0077
        --property=EnvironmentFile="$ENV_FILE"
    )
    if [ -n "$MIGRATE_ENV" ]; then
        migrate_props+=(--property=EnvironmentFile="$MIGRATE_ENV")
    fi
    systemd-run --quiet --wait --pipe --collect --service-type=exec \
        --unit="prebookd-migrate-$$" "${migrate_props[@]}" \
        "$PREFIX/venv/bin/prebookd" migrate
fi

# ---- start -----------------------------------------------------------------------------
systemctl enable --quiet prebookd.service
if [ "$DO_START" -eq 1 ]; then
    if systemctl is-active --quiet prebookd.service; then
        step "restarting prebookd (in-flight requests drain first, up to TimeoutStopSec)"
        systemctl restart prebookd.service
    else
        step "starting prebookd"
        systemctl start prebookd.service
    fi
    systemctl --no-pager --lines=0 status prebookd.service || true
    echo "logs: journalctl -u prebookd -f    state: $PREFIX/venv/bin/prebookd status"
else
    echo "installed and enabled, not started: systemctl start prebookd"
fi

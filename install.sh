#!/usr/bin/env bash
# Installs gate: `--dev` for a workstation or CI, default mode for the service on a Raspberry Pi.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mode=service
for arg in "$@"; do
  case "$arg" in
    --dev) mode=dev ;;
    -h|--help)
      cat <<USAGE
usage: ./install.sh --dev                 workstation or CI: apt packages (zbar, mosquitto, RabbitMQ, PostgreSQL,
                                         Patroni+etcd, prometheus for promtool, chromium (console tests), nodejs),
                                         ./.venv, pip install -e .[dev] -c constraints.txt, htmx for the console (npm)
       sudo ./install.sh [SERVICE OPTION] the service on a Raspberry Pi (docs/operations.md)

service options:
  (none)         install: apt packages, user 'gate', venv in /opt/gate, /etc/gate/gate.toml (from the example,
                 once), the unit, /usr/local/bin/gate; enable; start once the config validates
  --upgrade      reinstall the code into the existing venv, check the config (as the service reads it), restart
  --uninstall    stop and remove the service, /opt/gate and /usr/local/bin/gate; keep /etc/gate and /var/lib/gate
  --purge        with --uninstall: also remove /etc/gate, /var/lib/gate and the user
  --prefix DIR   lay everything out under DIR (no apt, no user, no systemctl): for tests and packaging
  --dry-run      print what would be done, change nothing
  -h, --help     this text
USAGE
      exit 0 ;;
    *) ;;  # service-mode options are handled by script/install-service
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "install.sh: apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

if [ "$mode" = dev ]; then
  # prometheus: its promtool checks the /metrics output in the tests.
  apt_install libzbar0 mosquitto mosquitto-clients python3-venv systemd rabbitmq-server postgresql prometheus
  # chromium (and its driver): the console's browser tests drive Debian's headless chromium with Playwright.
  apt_install chromium chromium-driver
  # patroni + etcd: PostgreSQL failover tests and bench/fleet.py --pg patroni (tests/patroni.py starts its own).
  apt_install patroni etcd-server etcd-client
  # faketime: central's tools run with a skewed clock in the command-ordering tests (tests/test_edges.py).
  apt_install faketime
  # Installing the mosquitto package may start a system broker on 1883; tests start their own.
  py=${PYTHON:-python3}; [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] && py=/usr/bin/python3  # Debian's
  [ -x "$here/.venv/bin/python" ] || "$py" -m venv "$here/.venv"
  "$here/.venv/bin/python" -m pip install -q --upgrade pip
  "$here/.venv/bin/python" -m pip install -q -e "$here[dev]" -c "$here/constraints.txt"  # the versions CI tests
  # The official AsyncAPI parser checks docs/asyncapi.yaml in the tests (about 55 MB in script/asyncapi/).
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  (cd "$here/script/asyncapi" && npm ci --no-audit --no-fund --loglevel=error)
  # htmx, which the console serves for the fleet page's live updates (gate/central/console/static/vendor/).
  (cd "$here/gate/central/console/static/vendor" && npm ci --no-audit --no-fund --loglevel=error)
  echo "install.sh: development environment ready in $here/.venv"
  exit 0
fi

exec "$here/script/install-service" "$@"

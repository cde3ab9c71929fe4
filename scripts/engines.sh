#!/usr/bin/env bash
# Installs the database engines the engine tests run (functions/deploy-staging-db/tests/engines.rs):
# Debian's PostgreSQL and MariaDB, server and client, plus a user with uid/gid 999, the uid the
# official database images run as (the rendered pods' runAsUser). Idempotent; `apt-get update` runs
# at most once per call, and only when something is missing.
#
# The engines are only installed, never left running: the tests start their own instances on unix
# sockets in a temporary directory. Without root (a developer's machine) it prints the command to
# run instead, and the tests print SKIP; under CI=true a missing engine fails.
set -euo pipefail

PACKAGES=(postgresql mariadb-server mariadb-client)
INSTALL="apt-get update && apt-get install -y ${PACKAGES[*]}"

have_engines() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null &&
    command -v psql >/dev/null &&
    { command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } &&
    command -v mariadb-install-db >/dev/null &&
    command -v mysql >/dev/null
}

missing() {
  echo "engines: $1" >&2
  if [ "${CI:-}" = true ]; then exit 1; fi
  echo "engines: the engine tests will print SKIP" >&2
  exit 0
}

if ! have_engines; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    missing "PostgreSQL and MariaDB are not installed; install with: sudo sh -c '$INSTALL'"
  fi
  echo "engines: installing ${PACKAGES[*]} (Debian)" >&2
  # Installed, not started: no policy-rc.d of ours may stay behind, and none of the machine's is
  # replaced.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap 'if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  have_engines || missing "installing ${PACKAGES[*]} did not bring initdb, psql, mariadbd, mariadb-install-db and mysql"
fi

# The official images' database user: uid/gid 999. Any user of that uid will do (the name is only
# looked up, never used); one is made when there is none.
if ! getent passwd 999 >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    missing "no user has uid 999 (the database images' user); make one with: sudo useradd --system --uid 999 --user-group --no-create-home --shell /usr/sbin/nologin snapstage-db"
  fi
  if getent group 999 >/dev/null; then
    useradd --system --uid 999 --gid 999 --no-create-home --shell /usr/sbin/nologin snapstage-db
  else
    useradd --system --uid 999 --user-group --no-create-home --shell /usr/sbin/nologin snapstage-db
  fi
fi

pg=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
echo "engines: PostgreSQL $("$pg/postgres" --version | awk '{print $3}') ($pg), $(mariadbd --version 2>/dev/null || /usr/sbin/mariadbd --version), uid 999 = $(getent passwd 999 | cut -d: -f1)" >&2

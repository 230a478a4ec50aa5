# shellcheck shell=bash
# The PostgreSQL 15 helper of the shell scripts (scripts/dev, scripts/test, scripts/bench,
# scripts/bench-api). Source it; it only sets PGBIN and PG_AS and defines functions:
#
#   pg_require                 stop at once, with the install command, unless PostgreSQL 15 is there
#   pg_prepare_dir DIR         create DIR for a cluster, owned by the user that runs PostgreSQL;
#                              fails when that user cannot enter it (see below)
#   pg_init DIR                initdb DIR/data: user postgres, password postgres, UTF8
#   pg_start DIR PORT [OPT...] start it on 127.0.0.1:PORT (socket in DIR, log DIR/pg.log) with
#                              wal_level=logical; OPT are more server options (`-c fsync=off`)
#   pg_running DIR, pg_stop DIR
#   port_busy PORT             something listens on 127.0.0.1:PORT
#
# PostgreSQL refuses to run as root, so as root every PostgreSQL command runs as the `postgres`
# user (runuser), from `/`. That user must be able to enter the cluster's directory: a checkout
# under a mode-700 directory such as root's home is out of its reach (pg_prepare_dir fails there).

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_AS=()
if [ "$(id -u)" = 0 ]; then PG_AS=(runuser -u postgres --); fi

_pg_say() { echo "${0##*/}: $*" >&2; }

# Runs a PostgreSQL command as the right user, from a directory that user can enter.
_pg_run() { (cd / && "${PG_AS[@]}" "$@"); }

pg_require() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo "
  if [ ! -x "$PGBIN/initdb" ] || [ ! -x "$PGBIN/pg_ctl" ]; then
    _pg_say "PostgreSQL 15 is missing ($PGBIN/initdb not found). Install it with:"
    if [ -f /etc/debian_version ]; then
      echo "    ${sudo}apt-get update && ${sudo}apt-get install -y postgresql-15" >&2
    else
      echo "    your system's PostgreSQL 15 server package" >&2
    fi
    echo "  or set PGBIN to the bin directory of an installed PostgreSQL 15." >&2
    exit 1
  fi
  if [ ${#PG_AS[@]} -gt 0 ] && ! id postgres >/dev/null 2>&1; then
    _pg_say "run as root, but there is no 'postgres' user to run PostgreSQL as."
    echo "    ${sudo}apt-get install -y postgresql-15   (creates it), or run as a normal user" >&2
    exit 1
  fi
}

pg_prepare_dir() {
  mkdir -p "$1"
  if [ ${#PG_AS[@]} -gt 0 ]; then
    chown postgres: "$1"
    _pg_run test -w "$1" -a -x "$1" 2>/dev/null
  fi
}

pg_init() {
  local dir=$1
  echo postgres >"$dir/pw"
  chmod 600 "$dir/pw"
  if [ ${#PG_AS[@]} -gt 0 ]; then chown postgres: "$dir/pw"; fi
  if ! _pg_run "$PGBIN/initdb" -D "$dir/data" -U postgres -E UTF8 --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$dir/pw" >"$dir/initdb.log" 2>&1; then
    rm -f "$dir/pw"
    _pg_say "initdb failed; its output:"
    cat "$dir/initdb.log" >&2
    return 1
  fi
  rm -f "$dir/pw"
}

pg_start() {
  local dir=$1 port=$2
  shift 2
  if ! _pg_run "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w -o "-p $port -k $dir \
    -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=20 \
    -c max_wal_senders=20 $*" start >/dev/null; then
    _pg_say "PostgreSQL did not start on port $port; the end of $dir/pg.log:"
    tail -20 "$dir/pg.log" >&2
    return 1
  fi
}

pg_running() {
  [ -f "$1/data/PG_VERSION" ] && _pg_run "$PGBIN/pg_ctl" -D "$1/data" status >/dev/null 2>&1
}

pg_stop() {
  if pg_running "$1"; then
    _pg_run "$PGBIN/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sourced by scripts/test and scripts/bench-store.sh: a throwaway PostgreSQL cluster.
#
#   pg_cluster_start [SETTING=VALUE ...]   initdb and pg_ctl into a temporary directory (as
#                                          `nobody` when run as root), on a free loopback port;
#                                          sets PG_CLUSTER_URL to its `postgres` database
#   pg_cluster_stop                        stops it and removes the directory
#
# Needs Debian's postgresql package (apt-get install -y postgresql).

pg_cluster_dir=""
pg_cluster_bin=""
pg_cluster_owner=()

# Runs a PostgreSQL program as the cluster's owner, from the cluster's directory: the owner may
# not be allowed into the current one (a clone under /root), and pg_ctl changes into it.
pg_cluster_run() {
    (cd "$pg_cluster_dir" && "${pg_cluster_owner[@]}" "$pg_cluster_bin/$1" "${@:2}")
}

pg_cluster_stop() {
    if [ -n "$pg_cluster_dir" ]; then
        pg_cluster_run pg_ctl -D "$pg_cluster_dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$pg_cluster_dir"
        pg_cluster_dir=""
    fi
}

pg_cluster_start() {
    pg_cluster_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$pg_cluster_bin" ] || [ ! -x "$pg_cluster_bin/initdb" ]; then
        echo "PostgreSQL is not installed: apt-get install -y postgresql," \
            "or set SPARKY_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres" >&2
        return 1
    fi
    pg_cluster_dir=$(mktemp -d /tmp/sparky-pgcluster-XXXXXX)
    # initdb refuses to run as root: the cluster then belongs to nobody.
    if [ "$(id -u)" -eq 0 ]; then
        chown nobody:nogroup "$pg_cluster_dir"
        pg_cluster_owner=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
    fi
    pg_cluster_run initdb -D "$pg_cluster_dir/data" -U sparky --auth=trust -N -E UTF8 \
        --locale=C.UTF-8 >/dev/null
    local options="-k $pg_cluster_dir -c listen_addresses=127.0.0.1 -c max_connections=300"
    local setting
    for setting in "$@"; do
        options="$options -c $setting"
    done
    local attempt port
    for attempt in 1 2 3 4 5; do
        port=$((20000 + RANDOM % 30000))
        # A port something answers on is taken; try another.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue
        fi
        if pg_cluster_run pg_ctl -D "$pg_cluster_dir/data" -l "$pg_cluster_dir/server.log" -w \
            -o "-p $port $options" start >/dev/null; then
            PG_CLUSTER_URL="postgres://sparky@127.0.0.1:$port/postgres"
            return 0
        fi
    done
    echo "the throwaway PostgreSQL did not start:" >&2
    cat "$pg_cluster_dir/server.log" >&2
    return 1
}

#!/usr/bin/env bash
# tools/testenv.sh — run a command with the test servers up.
#
#   tools/testenv.sh make test-go fuzz   # what `make test` does
#   tools/testenv.sh bash                # a shell with the servers up
#   tools/testenv.sh                     # print the exports, keep the servers up until Ctrl-C
#
# For each of SYNCGATE_MONGO_URI and SYNCGATE_REDIS_ADDR that is already set,
# the given server is used as is (that is how the suite runs against a real
# MongoDB replica set). For each one that is not set, this script starts a
# private server on a free loopback port:
#   - Redis 7.0 (redis-server; installed with apt-get when missing), no persistence;
#   - FerretDB v1.24 with the SQLite backend (tools/ferretdb, built once into
#     bin/ferretserver and rebuilt only when tools/ferretdb or the Go version changes).
# Then it exports the variables, runs the command, stops exactly what it started
# (by PID: SIGTERM, then SIGKILL after 5 s), removes its temp dir and exits with
# the command's status. A server that cannot be installed, built or started
# fails the run with its log; nothing is ever skipped silently.
#
# TESTENV_TIMEOUT: seconds a server gets to accept connections (default 30).
# TESTENV_KEEP=1: keep the temp dir (server logs and data) instead of removing it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GO=${GO:-go}
START_TIMEOUT=${TESTENV_TIMEOUT:-30} # seconds for a server to accept connections

log() { echo "testenv: $*" >&2; }
die() {
	echo "testenv: ERROR: $*" >&2
	exit 1
}

WORK=""
BUILD_TMP="" # a half-written bin/ferretserver, removed on exit
PIDS=() # servers this script started, stopped by PID on exit

# alive PID: true while PID runs (a zombie does not count).
alive() {
	local state
	if [[ -r /proc/$1/stat ]]; then
		state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
		[[ -n $state && $state != Z && $state != X ]]
	else
		kill -0 "$1" 2>/dev/null
	fi
}

# stop PID: SIGTERM, up to 5 s for it to exit, then SIGKILL. PID is our child,
# so `wait` reaps it.
stop() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		log "PID $pid did not stop within 5 s; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

# forget_pid PID: PID has been reaped; never signal it again (it may be reused).
forget_pid() {
	local keep=() p
	for p in ${PIDS[@]+"${PIDS[@]}"}; do
		[[ $p == "$1" ]] || keep+=("$p")
	done
	PIDS=(${keep[@]+"${keep[@]}"})
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM HUP
	local pid
	for pid in ${PIDS[@]+"${PIDS[@]}"}; do
		stop "$pid"
	done
	if [[ -n $BUILD_TMP ]]; then
		rm -f "$BUILD_TMP"
	fi
	if [[ -n $WORK && -n ${TESTENV_KEEP:-} ]]; then
		log "kept the server logs and data in $WORK (TESTENV_KEEP is set)"
	elif [[ -n $WORK ]]; then
		rm -rf "$WORK"
	fi
	exit "$status"
}
# on_signal CODE: the command (if running) gets SIGTERM (which make passes on
# to its children, unlike SIGINT) and up to 10 s to finish; then the EXIT trap
# stops the servers.
CMD_PID=""
on_signal() {
	trap '' INT TERM HUP
	if [[ -n $CMD_PID ]] && alive "$CMD_PID"; then
		kill -TERM "$CMD_PID" 2>/dev/null || true
		local i
		for ((i = 0; i < 100; i++)); do
			alive "$CMD_PID" || break
			sleep 0.1
		done
		if alive "$CMD_PID"; then
			log "the command (PID $CMD_PID) did not stop within 10 s; sending SIGKILL"
			kill -KILL "$CMD_PID" 2>/dev/null || true
		fi
		wait "$CMD_PID" 2>/dev/null || true
	fi
	exit "$1"
}
trap cleanup EXIT
trap 'on_signal 129' HUP
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# tcp_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
tcp_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# redis_pong PORT: true when a PING on 127.0.0.1:PORT is answered with +PONG.
redis_pong() {
	local line
	line=$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf 'PING\r\n' >&3
		IFS= read -r -t 2 l <&3 || exit 1
		printf '%s' "$l"
	) || return 1
	[[ $line == "+PONG"* ]]
}

# owns_port PORT PID: true when PID holds the socket listening on PORT, so a
# process that took the port in a race is never mistaken for our server.
# Without /proc (not Linux) it cannot tell and says yes.
owns_port() {
	local port=$1 pid=$2 hex inode fd
	[[ -r /proc/net/tcp && -d /proc/$pid/fd ]] || return 0
	hex=$(printf '%04X' "$port")
	for inode in $(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10 }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null); do
		for fd in "/proc/$pid/fd/"*; do
			[[ $(readlink "$fd" 2>/dev/null) == "socket:[$inode]" ]] && return 0
		done
	done
	return 1
}

# free_port: a loopback port that nothing listens on, below the usual
# ephemeral range (32768+) so outgoing connections do not take it meanwhile.
# Another process can still take it before our server binds; start_server
# then retries on another port.
# Sets FREE_PORT.
USED_PORTS=" "
FREE_PORT=""
free_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ $USED_PORTS == *" $p "* ]] && continue
		if ! tcp_open "$p"; then
			USED_PORTS+="$p "
			FREE_PORT=$p
			return 0
		fi
	done
	die "no free loopback port found in 20000-31999"
}

# start_server NAME READY_FN LOGFILE CMD... — CMD contains the literal word
# @PORT@, replaced by a free port. Starts CMD in the background, waits until
# READY_FN PORT succeeds while the process is alive, and sets STARTED_PORT.
# Retries on another port when the server lost a race for its port.
STARTED_PORT=""
start_server() {
	local name=$1 ready=$2 logfile=$3
	shift 3
	local attempt port pid deadline args a
	for ((attempt = 1; attempt <= 5; attempt++)); do
		free_port
		port=$FREE_PORT
		args=()
		for a in "$@"; do args+=("${a//@PORT@/$port}"); done
		: >"$logfile"
		"${args[@]}" </dev/null >>"$logfile" 2>&1 &
		pid=$!
		PIDS+=("$pid")
		deadline=$((SECONDS + START_TIMEOUT))
		while ((SECONDS < deadline)); do
			if ! alive "$pid"; then
				break
			fi
			if "$ready" "$port" && owns_port "$port" "$pid"; then
				STARTED_PORT=$port
				log "$name up on 127.0.0.1:$port (PID $pid)"
				return 0
			fi
			sleep 0.05
		done
		if alive "$pid"; then
			log "$name (PID $pid) did not accept connections on 127.0.0.1:$port within ${START_TIMEOUT}s; its log:"
			sed 's/^/    /' "$logfile" >&2
			[[ -s $logfile ]] || echo "    (empty)" >&2
			die "$name did not start"
		fi
		wait "$pid" 2>/dev/null || true
		forget_pid "$pid"
		if grep -qi 'address already in use' "$logfile"; then
			log "$name lost port $port to another process; retrying on another port"
			continue
		fi
		log "$name exited during startup; its log:"
		sed 's/^/    /' "$logfile" >&2
		die "$name did not start"
	done
	die "$name: no usable port after 5 attempts"
}

. "$(dirname "${BASH_SOURCE[0]}")/as_root.sh"

ensure_redis() {
	if ! command -v redis-server >/dev/null 2>&1; then
		command -v apt-get >/dev/null 2>&1 ||
			die "redis-server is not installed and apt-get is not available; install Redis 7.0 yourself, or set SYNCGATE_REDIS_ADDR=host:port to use a running Redis"
		log "redis-server not found; installing it with apt-get"
		if ! { as_root apt-get update -q &&
			as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; } >&2; then
			die "could not install redis-server with apt-get (this needs root or sudo, and a reachable Debian mirror); install it yourself, or set SYNCGATE_REDIS_ADDR=host:port"
		fi
		command -v redis-server >/dev/null 2>&1 || die "apt-get installed redis-server, but it is not on PATH ($PATH)"
	fi
	local version
	version=$(redis-server --version) || die "redis-server --version failed"
	log "$version"
	if [[ $version =~ v=([0-9]+)\.([0-9]+) ]]; then
		local major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
		if ((major < 7)); then
			die "Redis $major.$minor is too old: syncgate targets Redis 7.0 (Debian bookworm's redis-server)"
		elif ((major > 7 || minor > 0)); then
			log "WARNING: Redis $major.$minor, not 7.0: tests may pass using commands Redis 7.0 lacks (e.g. HEXPIRE)"
		fi
	else
		die "cannot parse the Redis version from: $version"
	fi
}

# ensure_ferretserver: build tools/ferretdb into bin/ferretserver unless the
# binary was built from the same sources with the same Go.
FERRETSERVER=$ROOT/bin/ferretserver
ensure_ferretserver() {
	command -v "$GO" >/dev/null 2>&1 || die "'$GO' not found; Go is needed to build tools/ferretdb"
	local src=$ROOT/tools/ferretdb stamp=$ROOT/bin/ferretserver.stamp want
	want=$({
		"$GO" version
		cd "$src" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
	} | sha256sum | cut -d' ' -f1)
	if [[ -x $FERRETSERVER && -f $stamp && $(cat "$stamp") == "$want" ]]; then
		return 0
	fi
	log "building tools/ferretdb -> bin/ferretserver (the first build downloads FerretDB and takes about a minute)"
	mkdir -p "$ROOT/bin"
	local start=$SECONDS
	BUILD_TMP=$(mktemp "$ROOT/bin/.ferretserver.XXXXXX")
	if ! (cd "$src" && GOWORK=off "$GO" build -mod=readonly -buildvcs=false -o "$BUILD_TMP" .) >&2; then
		die "building tools/ferretdb failed"
	fi
	mv -f "$BUILD_TMP" "$FERRETSERVER" # atomic: a concurrent run keeps its old binary
	BUILD_TMP=""
	echo "$want" >"$stamp"
	log "built bin/ferretserver in $((SECONDS - start)) s"
}

t0=$SECONDS
need_redis=0 need_mongo=0
[[ -n ${SYNCGATE_REDIS_ADDR:-} ]] || need_redis=1
[[ -n ${SYNCGATE_MONGO_URI:-} ]] || need_mongo=1

if ((need_redis || need_mongo)); then
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/syncgate-testenv.XXXXXX")
fi
if ((need_redis)); then
	ensure_redis
	mkdir -p "$WORK/redis"
	start_server redis redis_pong "$WORK/redis.log" \
		redis-server --bind 127.0.0.1 --port @PORT@ --save '' --appendonly no \
		--daemonize no --dir "$WORK/redis"
	export SYNCGATE_REDIS_ADDR=127.0.0.1:$STARTED_PORT
else
	log "using the given Redis SYNCGATE_REDIS_ADDR=$SYNCGATE_REDIS_ADDR"
fi
if ((need_mongo)); then
	ensure_ferretserver
	# For tests that run their own instance. Not SYNCGATE_*: syncgate reads
	# every SYNCGATE_* variable as configuration and warns about unknown ones.
	export TESTENV_FERRETSERVER=$FERRETSERVER
	start_server ferretserver tcp_open "$WORK/ferretserver.log" \
		"$FERRETSERVER" -listen 127.0.0.1:@PORT@ -dir "$WORK/ferretdata"
	export SYNCGATE_MONGO_URI=mongodb://127.0.0.1:$STARTED_PORT/
else
	log "using the given MongoDB SYNCGATE_MONGO_URI=$SYNCGATE_MONGO_URI"
fi
if ((need_redis || need_mongo)); then
	log "servers up in $((SECONDS - t0)) s"
fi

if [[ $# -eq 0 ]]; then
	echo "export SYNCGATE_MONGO_URI='$SYNCGATE_MONGO_URI'"
	echo "export SYNCGATE_REDIS_ADDR='$SYNCGATE_REDIS_ADDR'"
	log "servers stay up until Ctrl-C"
	while :; do
		sleep 3600 &
		PIDS+=("$!")
		wait $! || true
	done
fi

# The command runs as a background job and the script waits for it, so a
# signal to this script is handled at once instead of after the command ends.
# The job keeps the terminal as stdin, and gets back the default SIGINT and
# SIGQUIT (bash makes background jobs ignore them), so Ctrl-C still stops it.
(
	trap - INT QUIT
	exec "$@"
) <&0 &
CMD_PID=$!
set +e
wait "$CMD_PID"
status=$?
set -e
CMD_PID=""
exit "$status"

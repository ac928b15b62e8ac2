#!/usr/bin/env bash
# Runs the official-OpenAI-SDK tests (test_openai_sdk.py) against a freshly started supervisor.
#
#   tests/python/run.sh [--model PATH] [--backend-bin PATH] [other `run` options...]
#
# Arguments are passed to `sentinel-supervisor run`. Environment:
#   SENTINEL_VENV  the virtualenv to use/create (default ~/.cache/sentinel-supervisor/venv)
#   SENTINEL_BIN   the supervisor binary (default $CARGO_TARGET_DIR or target, /debug/sentinel-supervisor)
#   PYTEST_ARGS    extra pytest arguments (e.g. "-k streaming -x")
# Exits with pytest's status. Needs python3 with venv (Debian: python3-venv) and curl.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${SENTINEL_VENV:-$HOME/.cache/sentinel-supervisor/venv}"
bin="${SENTINEL_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/sentinel-supervisor}"
deadline_s=300

die() { echo "run.sh: $*" >&2; exit 2; }

command -v curl >/dev/null || die "curl is missing (Debian: apt-get install curl)"
[[ -x "$bin" ]] || die "no supervisor binary at $bin (run \`cargo build\` first or set SENTINEL_BIN)"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "run.sh: creating virtualenv $venv" >&2
    python3 -m venv "$venv" || die "could not create a virtualenv (Debian: apt-get install python3-venv)"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
    || die "pip could not install $here/requirements.txt into $venv"

work="$(mktemp -d)"
key="sk-test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
pid=""
stop() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { echo "run.sh: supervisor ignored SIGTERM for 10 s, killing" >&2; kill -KILL "$pid"; }
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

show_log() { echo "--- supervisor stderr (last 40 lines) ---" >&2; tail -n 40 "$work/stderr" >&2 || true; }

SENTINEL_API_KEY="$key" "$bin" run --profile balanced --listen 127.0.0.1:0 "$@" \
    >"$work/stdout" 2>"$work/stderr" &
pid=$!

start=$SECONDS
url=""
until [[ -n "$url" ]]; do
    url="$(sed -n 's/^sentinel-supervisor listening on \(http:[^ ]*\)$/\1/p' "$work/stdout" | head -n1)"
    kill -0 "$pid" 2>/dev/null || { show_log; die "supervisor exited before listening"; }
    (( SECONDS - start < deadline_s )) || { show_log; die "no 'listening on' line within ${deadline_s} s"; }
    [[ -n "$url" ]] || sleep 0.1
done
echo "run.sh: supervisor pid $pid listening on $url; waiting for /health" >&2

until [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" == 200 ]]; do
    kill -0 "$pid" 2>/dev/null || { show_log; die "supervisor exited before the backend was ready"; }
    (( SECONDS - start < deadline_s )) || { show_log; die "/health not 200 within ${deadline_s} s"; }
    sleep 0.5
done
echo "run.sh: ready after $(( SECONDS - start )) s; running pytest" >&2

status=0
# shellcheck disable=SC2086 # PYTEST_ARGS is a list of words on purpose
SENTINEL_URL="$url/v1" SENTINEL_API_KEY="$key" \
    "$venv/bin/python" -m pytest -v -p no:cacheprovider "$here" ${PYTEST_ARGS:-} || status=$?
(( status == 0 )) || show_log
exit "$status"

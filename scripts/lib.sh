# Helpers the set-up scripts share (scripts/test, scripts/postgres-up, scripts/kafka-libs,
# bench/run.sh): sourced, not run.

say() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "error: need root (or sudo) to run: $*" >&2; return 1; fi
}

apt_install() {
    # `apt-get update` once per run, only when something must be installed.
    if [ -z "${_apt_updated:-}" ]; then as_root apt-get update -qq; _apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

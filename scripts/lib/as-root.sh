# Sourced by scripts that need root: `as_root "$0" "$@"` returns when this
# process is root, re-runs the script with sudo when it is not and sudo is
# there, and otherwise stops with what to do. (Minimal root installs have
# no sudo; a user's machine usually has.)
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1; then
        echo "$(basename "$1"): needs root; re-running with sudo" >&2
        exec sudo -- "$@"
    fi
    echo "$(basename "$1"): needs root (the lab creates a network namespace, bridges and tap devices), and there is no sudo: run it as root" >&2
    exit 1
}

# as_root runs a command as root: directly when we are root, else through
# sudo (non-interactive without a terminal). Sourced by testenv.sh and
# chromium.sh.
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
	else
		return 1
	fi
}

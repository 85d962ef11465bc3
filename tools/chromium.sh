#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests of the JS
# client (clients/js/test/browser): apt-get install chromium when
# /usr/bin/chromium (or $CHROMIUM) is missing. Fails loudly when it cannot.
set -euo pipefail
bin=${CHROMIUM:-/usr/bin/chromium}
log() { echo "chromium.sh: $*" >&2; }
die() { log "$*"; exit 1; }
. "$(dirname "${BASH_SOURCE[0]}")/as_root.sh"
if [[ -x $bin ]]; then
	exit 0
fi
command -v apt-get >/dev/null 2>&1 || die "$bin is missing and apt-get is not available; install Chromium and set CHROMIUM=/path/to/chromium"
log "$bin not found; installing chromium with apt-get"
if ! { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >&2; then
	die "could not install chromium with apt-get (needs root or sudo and a Debian mirror); install it yourself and set CHROMIUM"
fi
[[ -x $bin ]] || die "apt-get installed chromium, but $bin is not there"
log "installed $($bin --version 2>/dev/null | head -1)"

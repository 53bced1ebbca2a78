#!/bin/sh
# Install streamd on a systemd VM (Debian 12 or similar). Idempotent: run it
# again to upgrade the binary and the units; your config and token are kept.
#
#   make dist && sudo systemd/install.sh [path/to/dist/streamd]
#
# PREFIX (default /usr/local) and DESTDIR (default empty, for packaging or a
# dry run into a scratch directory) may be set in the environment.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
binary=${1:-$here/../dist/streamd}
prefix=${PREFIX:-/usr/local}
root=${DESTDIR:-}

fail() { echo "install.sh: $*" >&2; exit 1; }

[ -f "$binary" ] || fail "$binary not found: build it first with 'make dist'"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || fail "python3 3.11 or newer is required on this machine (found: $(python3 --version 2>&1 || echo none))"
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then fail "run as root (or set DESTDIR)"; fi

install -d -m 0755 "$root$prefix/bin" "$root/etc/systemd/system" "$root/etc/streamd"
install -m 0755 "$binary" "$root$prefix/bin/streamd.new"
mv -f "$root$prefix/bin/streamd.new" "$root$prefix/bin/streamd"
for unit in streamd.service streamd.socket; do
  sed "s#/usr/local/bin/streamd#$prefix/bin/streamd#g" "$here/$unit" > "$root/etc/systemd/system/$unit.new"
  chmod 0644 "$root/etc/systemd/system/$unit.new"
  mv -f "$root/etc/systemd/system/$unit.new" "$root/etc/systemd/system/$unit"
done

if [ -e "$root/etc/streamd/streamd.toml" ]; then
  echo "kept your /etc/streamd/streamd.toml (the current example: $here/streamd.toml.example)"
else
  install -m 0644 "$here/streamd.toml.example" "$root/etc/streamd/streamd.toml"
  echo "installed /etc/streamd/streamd.toml (commented example)"
fi

token_file="$root/etc/streamd/api-token"
if [ -e "$token_file" ]; then
  echo "kept the API token in /etc/streamd/api-token"
else
  umask 077
  token="sd_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
  printf '%s\n' "$token" > "$token_file.new"
  chmod 0600 "$token_file.new"
  mv -f "$token_file.new" "$token_file"
  echo "generated an API token in /etc/streamd/api-token (root only; give it to Marketo)"
fi

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  reloaded="yes"
else
  reloaded="no (not running under systemd, or DESTDIR set)"
fi

cat <<NEXT
streamd installed: $prefix/bin/streamd ($("$root$prefix/bin/streamd" --version 2>/dev/null || echo "version unknown"))
systemd reloaded: $reloaded

Next steps:
  1. Edit /etc/streamd/streamd.toml (listen address, sources), then check it:
       sudo streamd check-config --config /etc/streamd/streamd.toml
  2. Start it now and at boot:          sudo systemctl enable --now streamd
     (or keep the port across restarts:  sudo systemctl enable --now streamd.socket)
  3. Watch it:                          systemctl status streamd; journalctl -u streamd -f
  4. Give Marketo the URL and the token: sudo cat /etc/streamd/api-token
NEXT

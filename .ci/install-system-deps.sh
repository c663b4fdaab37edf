#!/usr/bin/env bash
# install-system-deps.sh — Debian packages the integration tests need.
#
# Installs Dovecot (IMAP + LMTP) for the real-server test fixtures in tests/support/dovecot.py.
# Idempotent: does nothing when `dovecot` and `doveadm` are already on PATH.
# Must run as root (CI runs as root). Never lets the package start a system Dovecot:
# if /usr/sbin/policy-rc.d is missing, a temporary one that denies service starts is
# created for the duration of the install and removed afterwards.
set -euo pipefail

# dovecot lives in /usr/sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

if command -v dovecot >/dev/null 2>&1 && command -v doveadm >/dev/null 2>&1; then
  echo "install-system-deps: dovecot already installed ($(dovecot --version)); skipping apt"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install-system-deps: must run as root to apt-get install dovecot-imapd dovecot-lmtpd" >&2
  exit 1
fi

POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=""
cleanup() {
  if [ -n "$CREATED_POLICY" ]; then
    echo "install-system-deps: removing temporary $POLICY"
    rm -f "$POLICY"
  fi
}
trap cleanup EXIT

if [ ! -e "$POLICY" ]; then
  echo "install-system-deps: creating temporary $POLICY (exit 101) so no system dovecot starts"
  printf '#!/bin/sh\nexit 101\n' > "$POLICY"
  chmod +x "$POLICY"
  CREATED_POLICY=1
fi

echo "install-system-deps: apt-get update"
apt-get update
echo "install-system-deps: apt-get install dovecot-imapd dovecot-lmtpd"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dovecot-imapd dovecot-lmtpd

echo "install-system-deps: installed $(dovecot --version)"

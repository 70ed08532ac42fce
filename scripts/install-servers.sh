#!/usr/bin/env bash
# Installs what the tests need from Debian (root): the real TLS and protocol servers they run
# on loopback; for the frozen tests, binutils (PyInstaller analyses binaries with it) and
# libpython3.11, the shared library PyInstaller needs from Debian's python3 (whose own
# executable is linked statically; a clean runner lacks the library); for the native package
# tests, rpm (rpmbuild, rpm -qp) and lintian (dpkg-deb is already there).
# Packaged instances are kept from starting (policy-rc.d) and stopped if they did start, so
# that the tests can use the well-known ports (389, 5432, ...) themselves.
set -euo pipefail
PACKAGES=(
  openssl gnutls-bin
  slapd ldap-utils
  postgresql
  mariadb-server
  dovecot-imapd dovecot-pop3d dovecot-managesieved
  vsftpd
  prosody
  xrdp
  binutils libpython3.11
  rpm lintian
)
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
for service in slapd postgresql mariadb dovecot vsftpd prosody xrdp xrdp-sesman; do
  service "$service" stop >/dev/null 2>&1 || true
done
pkill -x slapd || true
pkill -x prosody || true

#!/usr/bin/env bash
# Installs what the tests need from Debian (root): the real TLS and protocol servers they run
# on loopback, and binutils, which PyInstaller uses to analyse binaries for the frozen tests.
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
  binutils
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

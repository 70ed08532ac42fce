#!/usr/bin/env bash
# Installs what the tests need from Debian (root): the real TLS and protocol servers they run
# on loopback; for the frozen tests, binutils (PyInstaller analyses binaries with it) and
# libpython3.11, the shared library PyInstaller needs from Debian's python3 (whose own
# executable is linked statically; a clean runner lacks the library); for the native package
# tests, rpm (rpmbuild, rpm -qp) and lintian (dpkg-deb is already there).
#
# It never stops, restarts or signals a process: the tests run their own instances of these
# servers, on ports and in folders of their own, ended by pid, so packaged instances may keep
# running beside them. Packages already installed are left alone (no apt-get run at all);
# while missing ones are installed, policy-rc.d keeps their services from starting.
#
#   install-servers.sh          install the missing packages
#   install-servers.sh --list   print the package names, install nothing
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
if [ "${1:-}" = --list ]; then
  echo "${PACKAGES[*]}"
  exit 0
fi
missing=()
for package in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  if [ "$status" != installed ]; then missing+=("$package"); fi
done
if [ "${#missing[@]}" = 0 ]; then
  echo "install-servers.sh: every Debian package the tests need is installed"
  exit 0
fi
echo "install-servers.sh: installing with apt-get: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
  # 101: "action forbidden"; the packages' scripts then leave their services stopped.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

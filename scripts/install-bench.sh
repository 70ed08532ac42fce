#!/usr/bin/env bash
# Installs what scripts/bench_cycle.py needs from Debian (root): nginx, the C TLS server of the
# benchmark's target farm. The packaged instance is kept from starting (policy-rc.d) and stopped
# if it did start: the benchmark runs its own nginx with a temporary prefix on loopback ports.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
apt-get update -q
apt-get install -y -q --no-install-recommends nginx
if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
service nginx stop >/dev/null 2>&1 || true

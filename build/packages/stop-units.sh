# The package goes away: stop what runs and drop what an administrator enabled, so that no
# link points at a removed unit.
if [ -d /run/systemd/system ]; then
    systemctl stop @UNITS@ >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable @UNITS@ >/dev/null 2>&1 || true
fi

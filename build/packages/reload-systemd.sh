# Units were added, changed or removed: systemd reads them again (only when it runs).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi

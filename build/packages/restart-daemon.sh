# After an upgrade, a running daemon continues with the new executable; a timer's next run
# picks it up by itself.
if [ -d /run/systemd/system ]; then
    systemctl try-restart @DAEMON@ >/dev/null 2>&1 || true
fi

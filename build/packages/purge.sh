# Purge: the configuration (the token), the state dir with results not yet delivered, the
# unpack folder, and the account; nothing of the package is left.
for path in @CONFIG@ @CONFIG_DIR@; do
    if dpkg-statoverride --list "$path" >/dev/null 2>&1; then
        dpkg-statoverride --remove "$path"
    fi
done
rm -rf @CONFIG_DIR@ @STATE_DIR@ /var/lib/private/@NAME@ @CACHE_DIR@
if getent passwd @USER@ >/dev/null; then
    userdel @USER@ >/dev/null 2>&1 || true
fi
if getent group @USER@ >/dev/null; then
    groupdel @USER@ >/dev/null 2>&1 || true
fi

# The configuration holds the token: the folder root:@USER@ 0750, the file @USER@'s, 0600
# (the agent warns when a token file is readable by a group). A dpkg-statoverride, so dpkg
# keeps it on upgrades and an administrator can change it with dpkg-statoverride.
if ! dpkg-statoverride --list @CONFIG_DIR@ >/dev/null 2>&1; then
    dpkg-statoverride --update --add root @USER@ 0750 @CONFIG_DIR@
fi
if ! dpkg-statoverride --list @CONFIG@ >/dev/null 2>&1; then
    dpkg-statoverride --update --add @USER@ @USER@ 0600 @CONFIG@
fi

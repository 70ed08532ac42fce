# The system account the units run as (User=/Group=), with a group of its own.
if ! getent passwd @USER@ >/dev/null; then
    useradd --system --user-group --home-dir @STATE_DIR@ --no-create-home \
        --shell /usr/sbin/nologin --comment "TrackSSL agent" @USER@
fi

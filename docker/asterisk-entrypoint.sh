#!/bin/sh
# Container start for Dockerfile.asterisk: render dialplan/ into /etc/asterisk
# (the *.in templates get the secrets from the environment), then run
# Asterisk in the foreground as the asterisk user.
set -eu
: "${ICS_AMI_SECRET:?set ICS_AMI_SECRET}"
: "${ICS_AMI_LISTENER_SECRET:?set ICS_AMI_LISTENER_SECRET}"
: "${ICS_SIP_PASSWORD:?set ICS_SIP_PASSWORD}"
case "$ICS_AMI_SECRET$ICS_AMI_LISTENER_SECRET$ICS_SIP_PASSWORD" in
    *[!A-Za-z0-9]*) echo "secrets must be alphanumeric" >&2; exit 1 ;;
esac
src=/usr/share/ics/dialplan
find /etc/asterisk -maxdepth 1 -type f -name '*.conf' -delete
for f in "$src"/*.conf "$src"/*.conf.in; do
    [ -f "$f" ] || continue
    name=$(basename "$f" .in)
    sed -e "s/@AMI_SECRET@/$ICS_AMI_SECRET/g" -e "s/@AMI_LISTENER_SECRET@/$ICS_AMI_LISTENER_SECRET/g" \
        -e "s/@SIP_PASSWORD@/$ICS_SIP_PASSWORD/g" "$f" > "/etc/asterisk/$name"
done
if grep -q '@[A-Z_]*@' /etc/asterisk/*.conf; then
    echo "unrendered placeholder in /etc/asterisk" >&2; exit 1
fi
chmod 640 /etc/asterisk/*.conf
chown -R asterisk:asterisk /etc/asterisk /var/run/asterisk /var/lib/asterisk /var/log/asterisk \
    /var/spool/asterisk /var/cache/asterisk
exec asterisk -f -n -U asterisk -G asterisk "$@"

#!/bin/sh
# Least-privilege RabbitMQ users for the kit (run where rabbitmqctl reaches the node).
#
#   BRIDGE_PASSWORD=... CONSUMER_PASSWORD=... deploy/rabbitmq/users.sh
#
# - the bridge may publish to legacy.cdc and declare it (and its alternate exchange and
#   queue legacy.cdc.unrouted); it reads nothing of anyone else;
# - the consumer may read its queue and its dead-letter queue, bind them, publish its
#   dead letters to <queue>.dlx and its domain events to new_domain.events; it may
#   declare legacy.cdc (its declaration is idempotent) but never publish to it.
# Nobody else gets write permission on legacy.cdc: only the bridge can put a change
# there (docs/events.md, "What a consumer may trust").
#
# Settings (environment): VHOST (default /), USER_PREFIX (default strangler-),
# CDC_EXCHANGE (legacy.cdc), CONSUMER_QUEUE (new_domain.legacy_cdc), EVENTS_EXCHANGE
# (new_domain.events), RABBITMQCTL (rabbitmqctl). Passwords are read from the
# environment and handed to rabbitmqctl on its standard input, never on a command line.
# Idempotent: an existing user keeps its tags and gets the password and permissions.
set -eu

vhost=${VHOST:-/}
prefix=${USER_PREFIX:-strangler-}
cdc=${CDC_EXCHANGE:-legacy.cdc}
queue=${CONSUMER_QUEUE:-new_domain.legacy_cdc}
events=${EVENTS_EXCHANGE:-new_domain.events}
ctl=${RABBITMQCTL:-rabbitmqctl}
: "${BRIDGE_PASSWORD:?set BRIDGE_PASSWORD}" "${CONSUMER_PASSWORD:?set CONSUMER_PASSWORD}"

# RabbitMQ permissions are regular expressions over resource names.
quote() { printf '%s' "$1" | sed 's/[].[\\*^$()+?{}|]/\\&/g'; }
cdc_re=$(quote "$cdc")
queue_re=$(quote "$queue")
events_re=$(quote "$events")

user() {  # name password
  if "$ctl" -q list_users | cut -f1 | grep -qx "$1"; then
    printf '%s\n' "$2" | "$ctl" -q change_password "$1" >/dev/null
  else
    printf '%s\n' "$2" | "$ctl" -q add_user "$1" >/dev/null
  fi
}

user "${prefix}bridge" "$BRIDGE_PASSWORD"
"$ctl" -q set_permissions -p "$vhost" "${prefix}bridge" \
  "^${cdc_re}(\\.unrouted)?\$" "^${cdc_re}(\\.unrouted)?\$" "^${cdc_re}\\.unrouted\$"

user "${prefix}consumer" "$CONSUMER_PASSWORD"
"$ctl" -q set_permissions -p "$vhost" "${prefix}consumer" \
  "^(${cdc_re}(\\.unrouted)?|${queue_re}(\\.dlx|\\.dlq)?|${events_re})\$" \
  "^(${cdc_re}\\.unrouted|${queue_re}(\\.dlx|\\.dlq)?|${events_re})\$" \
  "^(${cdc_re}(\\.unrouted)?|${queue_re}(\\.dlx|\\.dlq)?)\$"

echo "users ${prefix}bridge and ${prefix}consumer have least-privilege permissions on vhost ${vhost}"

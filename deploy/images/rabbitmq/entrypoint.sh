#!/bin/sh
# The official image's two conveniences: the default account from the environment, and running as
# the rabbitmq user with the node named after the hostname.
set -e
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] || [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
  printf 'default_user = %s\ndefault_pass = %s\n' "${RABBITMQ_DEFAULT_USER:-guest}" "${RABBITMQ_DEFAULT_PASS:-guest}" \
    >> /etc/rabbitmq/rabbitmq.conf
fi
# the Erlang cookie, created once per data volume, owned by rabbitmq
if [ ! -f /var/lib/rabbitmq/.erlang.cookie ]; then
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > /var/lib/rabbitmq/.erlang.cookie
  chmod 600 /var/lib/rabbitmq/.erlang.cookie
fi
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
if [ "$(id -u)" = 0 ]; then
  exec su -s /bin/sh rabbitmq -c "exec $*"
fi
exec "$@"

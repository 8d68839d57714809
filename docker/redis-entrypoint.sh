#!/bin/sh
# Like the official image: options alone run redis-server with them; listen on every
# address with protected mode off (the container's network is the boundary), and let
# later options override these defaults.
set -e
case "$1" in
    -*|*.conf) set -- redis-server "$@" ;;
esac
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --bind "0.0.0.0 ::" --protected-mode no --dir /data "$@"
fi
exec "$@"

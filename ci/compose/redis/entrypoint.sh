#!/bin/sh
# As the official image does for a redis-server started without a config file: listen on every address
# of the container with protected mode off (the compose network decides who can reach it).
set -eu
if [ "$1" = redis-server ]; then
    shift
    exec redis-server --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"

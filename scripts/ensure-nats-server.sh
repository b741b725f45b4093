#!/bin/sh
# The NATS backend's tests start real nats-server processes. Install it from the OS
# packages when we can (root with apt-get); otherwise say how. Under CI=true a missing
# server fails the run instead of letting tests be skipped.
set -eu
if command -v nats-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "nats-server not found: installing it from the OS packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
    command -v nats-server >/dev/null 2>&1 && exit 0
fi
echo "nats-server is not installed. Install it with: sudo apt-get install -y nats-server" >&2
echo "(or put a nats-server 2.9+ binary on PATH)" >&2
if [ "${CI:-}" = "true" ]; then
    exit 1
fi
exit 0

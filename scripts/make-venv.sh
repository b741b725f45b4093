#!/bin/sh
# Creates the project's virtual environment. Debian and Ubuntu ship Python without
# ensurepip unless python3-venv is installed, so that package is added when it is missing
# and we are root; otherwise the message says what to install.
set -eu
python="$1"
venv="$2"
if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3.11 or newer" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "error: agentcluster needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2
    exit 1
fi
if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt-get update -qq
        apt-get install -y -qq "python$minor-venv" || apt-get install -y -qq python3-venv
        "$python" -m venv "$venv"
    else
        echo "error: '$python -m venv' failed; install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
        exit 1
    fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23"

#!/usr/bin/env bash
# Prints the uv binary the images are built with: the project's own, installed from PyPI into .tools/ at
# the version the Makefile pins, never the uv on this machine's PATH. That one is often a shim (pyenv,
# asdf, mise, a Homebrew wrapper): a shell script that calls back into the host and cannot run inside an
# image. Exits non-zero with one line if what it would use is not a Linux executable.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
make -s -C "$REPO" .tools/bin/uv >/dev/null
uv=$(readlink -f "$REPO/.tools/bin/uv")
if [ "$(head -c 4 "$uv" | od -An -tx1 | tr -d ' \n')" != 7f454c46 ]; then
    echo "image-uv: $uv is not an ELF executable, so it cannot run inside an image" >&2
    exit 2
fi
echo "$uv"

#!/bin/sh
# Builds res_ics_tonewatch.so against the installed Asterisk's headers into its module directory.
# One recipe for docker/stack.sh's Asterisk root, the container image (docker/Dockerfile.asterisk)
# and a host running Debian's asterisk package. Needs gcc, libc6-dev and asterisk-dev.
#   sh asterisk/build.sh [SOURCE [MODULE_DIR]]
set -eu
name=res_ics_tonewatch
src=${1:-$(dirname "$0")/$name.c}
moddir=${2:-$(ls -d /usr/lib/*/asterisk/modules | head -n1)}
[ -f /usr/include/asterisk.h ] || { echo "asterisk-dev is not installed (no /usr/include/asterisk.h)" >&2; exit 1; }
gcc -shared -fPIC -O3 -Wall -Werror -D_GNU_SOURCE -DAST_MODULE="\"$name\"" \
    -DAST_MODULE_SELF_SYM="__internal_${name}_self" -o "$moddir/$name.so.new" "$src" -lm
mv "$moddir/$name.so.new" "$moddir/$name.so"
echo "built $moddir/$name.so"

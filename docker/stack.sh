#!/usr/bin/env bash
# The ICS lab stack on this machine, without a Docker engine:
#   Asterisk 22 (Debian sid) in a debootstrap chroot, run as the asterisk user;
#   redis-server on 127.0.0.1:6380; the Python services ics-fastagi, ics-ami and ics-recorder.
# Everything binds to 127.0.0.1.
#
#   docker/stack.sh venv        .venv with pip install -e '.[test]' only
#   docker/stack.sh provision   host packages, .venv, the Asterisk root, secrets
#   docker/stack.sh up          provision if needed, render configs, start all
#   docker/stack.sh down        stop all (idempotent)
#   docker/stack.sh status      exit 0 when everything that should run runs (also prints
#                               icsctl status: the listener, live calls / capacity.max_calls)
#   docker/stack.sh reload      re-render configs; dialplan, pjsip and manager reload
#   docker/stack.sh up-cluster  Redis, call nodes a and b, Kamailio in front (README, Cluster)
#   docker/stack.sh down-cluster / status-cluster   (down stops the cluster's processes too)
#
# State lives in $ICS_STACK_DIR (default <repo>/.stack): asterisk/ (the root),
# redis/, log/, run/ (pidfiles), secrets.env (mode 600) and stack.env (what
# tests and tools source).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK=${ICS_STACK_DIR:-$REPO/.stack}
AST=$STACK/asterisk
LOGDIR=$STACK/log
RUNDIR=$STACK/run
REDIS_DIR=$STACK/redis
REDIS_PORT=${ICS_REDIS_PORT:-6380}
# ICS_REDIS_CLUSTER=1: a 3-master, 3-replica Redis Cluster on 127.0.0.1:7000-7005 instead
# (docker/redis-cluster.sh; make test-redis-cluster)
case ${ICS_REDIS_CLUSTER:-} in 1|true|yes|on) CLUSTER=1 ;; *) CLUSTER= ;; esac
CLUSTER_PORT=7000
# ICS_STACK_REDIS_TLS=1: Redis serves only TLS (README, Security): a CA and Redis's certificate made at
# provision under $STACK/tls (keys mode 600, never in the repo); rediss:// urls and ICS_REDIS_TLS_CA
# in stack.env; no client certificates (each service proves itself with its ACL user's password)
case ${ICS_STACK_REDIS_TLS:-} in 1|true|yes|on) TLS=1 ;; *) TLS= ;; esac
TLS_DIR=$STACK/tls
CLUSTER_SH=$REPO/docker/redis-cluster.sh
VENV=$REPO/.venv
PYTHON=${ICS_PYTHON:-python3.11}
SUITE=${ICS_DEBIAN_SUITE:-sid}
FASTAGI_PORT=4573
RECORDER_PORT=4577   # ics-recorder (recordings.recorder_port)
SOUNDS=$AST/var/lib/asterisk/sounds/ics
# kamailio: the cluster's SIP front; sip-tester (SIPp): the farm bench's handsets
HOST_PACKAGES=(debootstrap redis-server espeak-ng python3.11-venv kamailio sip-tester)
# the Spanish prompts' voice (SVOX Pico, prompts/manifest.toml [voices]): in Debian's non-free
NON_FREE_PACKAGES=(libttspico-utils)
# Asterisk's own sounds in every prompt language (SayNumber, digits); installed in the root
ROOT_SOUNDS=(asterisk-core-sounds-en-gsm asterisk-core-sounds-es-gsm)
# the cluster (up-cluster): call nodes "id:address" (each an Asterisk from the same root with its
# own ics-fastagi and ics-ami, all on that loopback address), Kamailio in front on its own
CLUSTER_NODES=${ICS_CLUSTER_NODES:-a:127.0.0.2 b:127.0.0.3}
KAMAILIO_ADDR=${ICS_KAMAILIO_ADDR:-127.0.0.4}
KAMAILIO_DIR=$STACK/kamailio

log() { printf '[stack] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot)"; }

# ---------------------------------------------------------------- provision

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

provision_host() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do have_pkg "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian's non-free component, from the same mirror and key as the host's own Debian source
# (deb822 debian.sources, as Debian 12 ships it), for NON_FREE_PACKAGES only
NON_FREE_LIST=/etc/apt/sources.list.d/ics-non-free.sources

provision_non_free() {
    local missing=() p
    for p in "${NON_FREE_PACKAGES[@]}"; do have_pkg "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ ! -f "$NON_FREE_LIST" ]; then
        local src=/etc/apt/sources.list.d/debian.sources uris signed codename
        [ -f "$src" ] || die "no $src to take the Debian mirror from (add non-free and install ${missing[*]})"
        uris=$(awk '/^URIs:/ {print $2; exit}' "$src")
        signed=$(awk '/^Signed-By:/ {print $2; exit}' "$src")
        codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
        printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: non-free\nSigned-By: %s\n' \
            "$uris" "$codename" "$signed" > "$NON_FREE_LIST"
    fi
    log "installing non-free host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# packages into a root provisioned before they were needed
root_install() {
    [ -s "$AST/etc/resolv.conf" ] || cp -L /etc/resolv.conf "$AST/etc/resolv.conf"
    in_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o Acquire::Check-Valid-Until=false update >/dev/null
    in_root env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o Acquire::Check-Valid-Until=false install -y --no-install-recommends \
        "$@" >>"$STACK/apt.log" 2>&1 || die "apt-get install $* failed (log: $STACK/apt.log)"
    in_root apt-get clean
}

# Asterisk's sounds of every prompt language, also in a root provisioned before they were listed
provision_root_sounds() {
    local missing=() p
    for p in "${ROOT_SOUNDS[@]}"; do
        in_root dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    # the Spanish package registers no "es" directory (English gets "en" from its alternative):
    # Asterisk looks for CHANNEL(language)=es sounds under sounds/es
    local es=$AST/usr/share/asterisk/sounds/es
    if [ ${#missing[@]} -eq 0 ]; then
        [ -e "$es" ] || ln -sfn es_MX_f_Allison "$es"
        return 0
    fi
    log "installing ${missing[*]} in the root"
    root_install "${missing[@]}"
    [ -e "$es" ] || ln -sfn es_MX_f_Allison "$es"
    touch "$AST/.ics-provisioned"  # a new root: copies of the old one (tests/conftest.py) are made again
}

venv_stamp() { sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1; }

provision_venv() {
    [ -f "$REPO/pyproject.toml" ] || die "no pyproject.toml at $REPO"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    local want; want=$(venv_stamp)
    if [ "$(cat "$VENV/.ics-installed" 2>/dev/null)" != "$want" ]; then
        log "pip install -e '.[test]'"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"
        echo "$want" > "$VENV/.ics-installed"
    fi
}

in_root() { chroot "$AST" "$@"; }

provision_asterisk() {
    [ -f "$AST/.ics-provisioned" ] && return 0
    local tmp=$AST.partial
    rm -rf "$tmp"
    mkdir -p "$STACK"
    log "debootstrap --variant=minbase $SUITE (about 30 s)"
    debootstrap --variant=minbase "$SUITE" "$tmp" >"$STACK/debootstrap.log" 2>&1 \
        || { tail -n 20 "$STACK/debootstrap.log" >&2; die "debootstrap failed (log: $STACK/debootstrap.log)"; }
    cp /etc/hosts "$tmp/etc/hosts"
    [ -f /etc/resolv.conf ] && cp -L /etc/resolv.conf "$tmp/etc/resolv.conf"
    # no service is ever started by a package script inside the root
    printf '#!/bin/sh\nexit 101\n' > "$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    log "apt-get install asterisk in the root"
    # sid's Release file is past its Valid-Until date on some mirrors
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o Acquire::Check-Valid-Until=false update >/dev/null
    chroot "$tmp" env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o Acquire::Check-Valid-Until=false install -y --no-install-recommends \
        asterisk "${ROOT_SOUNDS[@]}" tcc libc6-dev gcc asterisk-dev >"$STACK/apt.log" 2>&1 \
        || { tail -n 20 "$STACK/apt.log" >&2; die "apt-get install asterisk failed"; }
    chroot "$tmp" apt-get clean
    # keep the package's sample configs aside; /etc/asterisk holds only dialplan/
    mv "$tmp/etc/asterisk" "$tmp/etc/asterisk.dist"
    mkdir -p "$tmp/etc/asterisk"
    touch "$tmp/.ics-provisioned"
    rm -rf "$AST"
    mv "$tmp" "$AST"
    log "Asterisk $(in_root asterisk -V 2>/dev/null | sed 's/Asterisk //') in $AST"
}

# The bind-to-loopback shim (docker/bind_loopback.c), built with tcc inside
# the root: res_pjsip's DNS resolver would otherwise bind 0.0.0.0 and [::].
SHIM=/usr/local/lib/ics-bind-loopback.so

provision_shim() {
    local src=$REPO/docker/bind_loopback.c
    [ -f "$src" ] || return 0
    if [ -f "$AST$SHIM" ] && cmp -s "$src" "$AST/usr/local/src/bind_loopback.c"; then return 0; fi
    if [ ! -x "$AST/usr/bin/tcc" ]; then
        log "installing tcc in the root (bind-to-loopback shim)"
        root_install tcc libc6-dev
    fi
    mkdir -p "$AST/usr/local/src" "$AST/usr/local/lib"
    cp "$src" "$AST/usr/local/src/bind_loopback.new.c"
    in_root tcc -shared -fPIC -O2 -o "$SHIM.new" /usr/local/src/bind_loopback.new.c \
        || die "could not build the bind-to-loopback shim"
    mv "$AST$SHIM.new" "$AST$SHIM"
    mv "$AST/usr/local/src/bind_loopback.new.c" "$AST/usr/local/src/bind_loopback.c"
}

# The three-way tone watch (asterisk/res_ics_tonewatch.c): an Asterisk module built inside the root
# against its Asterisk's headers by asterisk/build.sh (asterisk-dev; tcc cannot read them), rebuilt
# when the source or the recipe changes.
TONEWATCH=res_ics_tonewatch

provision_tonewatch() {
    local src=$REPO/asterisk/$TONEWATCH.c build=$REPO/asterisk/build.sh moddir
    [ -f "$src" ] || return 0
    moddir=$(ls -d "$AST"/usr/lib/*/asterisk/modules | head -n1)
    if [ -f "$moddir/$TONEWATCH.so" ] && cmp -s "$src" "$AST/usr/local/src/$TONEWATCH.c" \
        && cmp -s "$build" "$AST/usr/local/src/$TONEWATCH.build.sh"; then return 0; fi
    if [ ! -x "$AST/usr/bin/gcc" ] || [ ! -f "$AST/usr/include/asterisk.h" ]; then
        log "installing gcc and asterisk-dev in the root (the tone watch module)"
        root_install gcc libc6-dev asterisk-dev
    fi
    mkdir -p "$AST/usr/local/src"
    cp "$src" "$AST/usr/local/src/$TONEWATCH.new.c"
    in_root sh -s "/usr/local/src/$TONEWATCH.new.c" < "$build" >/dev/null || die "could not build $TONEWATCH"
    mv "$AST/usr/local/src/$TONEWATCH.new.c" "$AST/usr/local/src/$TONEWATCH.c"
    cp "$build" "$AST/usr/local/src/$TONEWATCH.build.sh"
}

gen_secret() { "$PYTHON" -c 'import secrets; print(secrets.token_hex(16))'; }

# every secret of the stack, generated once at set-up (never in the repo): AMI users (icsctl's ics,
# the listener's ics-listener), SIP phones, Redis ACL users (ics/redis_acl.py). A secrets.env from
# before a secret existed gets the missing ones added.
SECRETS=(AMI_SECRET AMI_LISTENER_SECRET AMI_LAB_SECRET SIP_PASSWORD REDIS_FASTAGI_PASSWORD REDIS_LISTENER_PASSWORD
         REDIS_ICSCTL_PASSWORD REDIS_ADMIN_PASSWORD REDIS_RECORDER_PASSWORD)

provision_secrets() {
    mkdir -p "$STACK"
    local name added=
    ( umask 077; touch "$STACK/secrets.env" )
    for name in "${SECRETS[@]}"; do
        grep -q "^$name=" "$STACK/secrets.env" && continue
        echo "$name=$(gen_secret)" >> "$STACK/secrets.env"
        added+=" $name"
    done
    [ -z "$added" ] || log "secrets generated in $STACK/secrets.env:$added"
}

load_secrets() {
    local name value
    for name in "${SECRETS[@]}"; do
        value=$(sed -n "s/^$name=//p" "$STACK/secrets.env")
        [[ $value =~ ^[A-Za-z0-9]{16,}$ ]] \
            || die "$STACK/secrets.env is damaged ($name); delete it and run provision again"
        printf -v "$name" '%s' "$value"
    done
}

# Redis ACL users (ics/redis_acl.py: fastagi / listener / icsctl with their keys and commands,
# default = the admin with its own password, for ops and tests); the file redis-server loads (--aclfile)
render_redis_acl() {
    load_secrets
    mkdir -p "$REDIS_DIR"
    ( umask 077
      ICS_REDIS_PASSWORD_FASTAGI=$REDIS_FASTAGI_PASSWORD ICS_REDIS_PASSWORD_LISTENER=$REDIS_LISTENER_PASSWORD \
      ICS_REDIS_PASSWORD_RECORDER=$REDIS_RECORDER_PASSWORD \
      ICS_REDIS_PASSWORD_ICSCTL=$REDIS_ICSCTL_PASSWORD ICS_REDIS_PASSWORD_ADMIN=$REDIS_ADMIN_PASSWORD \
          "$VENV/bin/python" -m ics.redis_acl > "$REDIS_DIR/users.acl.tmp" ) \
        || die "could not render the Redis ACL users (ics/redis_acl.py)"
    cmp -s "$REDIS_DIR/users.acl.tmp" "$REDIS_DIR/users.acl" || ACL_CHANGED=1
    mv "$REDIS_DIR/users.acl.tmp" "$REDIS_DIR/users.acl"
}

# the CA and Redis's certificate (IP 127.0.0.1: every Redis of the lab listens there), made
# once; a certificate within a day of its end is made again
provision_tls() {
    [ -n "$TLS" ] || return 0
    if [ -s "$TLS_DIR/redis.crt" ] && openssl x509 -checkend 86400 -noout -in "$TLS_DIR/redis.crt" >/dev/null 2>&1; then
        return 0
    fi
    log "making a CA and Redis's certificate in $TLS_DIR"
    mkdir -p "$TLS_DIR"
    ( cd "$TLS_DIR" && umask 077
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt \
          -days 825 -subj "/CN=ICS Redis CA"
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout redis.key -out redis.csr \
          -subj "/CN=redis"
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > redis.ext
      openssl x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out redis.crt -days 825 \
          -extfile redis.ext
      rm -f redis.csr redis.ext ca.srl
      chmod 644 ca.crt redis.crt ) >"$STACK/tls.log" 2>&1 || die "openssl failed (log: $STACK/tls.log)"
}

# redis-server's listening options for PORT: plaintext, or (ICS_STACK_REDIS_TLS) TLS only
redis_listen() {
    if [ -n "$TLS" ]; then
        echo --port 0 --tls-port "$1" --tls-cert-file "$TLS_DIR/redis.crt" --tls-key-file "$TLS_DIR/redis.key" \
            --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no --tls-replication yes
    else
        echo --port "$1"
    fi
}
REDIS_CLI_TLS=()
[ -z "$TLS" ] || REDIS_CLI_TLS=(--tls --cacert "$TLS_DIR/ca.crt")

rcli() { REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD redis-cli "${REDIS_CLI_TLS[@]}" -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }

write_stack_env() {
    load_secrets
    ( umask 077
      local scheme=redis${TLS:+s} url p
      url=$scheme://127.0.0.1:$REDIS_PORT/0
      if [ -n "$CLUSTER" ]; then
          url=; for p in 0 1 2 3 4 5; do url+=${url:+,}$scheme://127.0.0.1:$((CLUSTER_PORT + p)); done
      fi
      cat > "$STACK/stack.env.tmp" <<EOF
ICS_REDIS_URL=$url
ICS_REDIS_CLUSTER=$([ -n "$CLUSTER" ] && echo true || echo false)
ICS_REDIS_USERNAME=icsctl
ICS_REDIS_PASSWORD=$REDIS_ICSCTL_PASSWORD
ICS_REDIS_TLS_CA=${TLS:+$TLS_DIR/ca.crt}
ICS_STACK_REDIS_ADMIN_URL=${url//:\/\//://default:$REDIS_ADMIN_PASSWORD@}
ICS_STACK_AMI_LAB_USER=ics-lab
ICS_STACK_AMI_LAB_SECRET=$AMI_LAB_SECRET
ICS_AMI_HOST=127.0.0.1
ICS_AMI_PORT=5038
ICS_AMI_USER=ics
ICS_AMI_SECRET=$AMI_SECRET
ICS_SOUNDS_DIR=$SOUNDS
ICS_RECORDINGS_DIR=$AST/var/spool/asterisk/monitor
ICS_CAPACITY_RTP_CONF=$AST/etc/asterisk/rtp.conf
ICS_SIP_PASSWORD=$SIP_PASSWORD
ICS_ASTERISK_ROOT=$AST
EOF
    )
    mv "$STACK/stack.env.tmp" "$STACK/stack.env"
    # each service's own credentials, read after stack.env (as a systemd unit's EnvironmentFile)
    ( umask 077
      printf 'ICS_REDIS_USERNAME=fastagi\nICS_REDIS_PASSWORD=%s\n' "$REDIS_FASTAGI_PASSWORD" > "$STACK/fastagi.env"
      printf 'ICS_REDIS_USERNAME=listener\nICS_REDIS_PASSWORD=%s\nICS_AMI_SECRET=%s\n' \
          "$REDIS_LISTENER_PASSWORD" "$AMI_LISTENER_SECRET" > "$STACK/ami.env"
      printf 'ICS_REDIS_USERNAME=recorder\nICS_REDIS_PASSWORD=%s\n' "$REDIS_RECORDER_PASSWORD" > "$STACK/recorder.env" )
}

cmd_provision() {
    need_root
    provision_host
    provision_non_free
    provision_venv
    provision_asterisk
    provision_root_sounds
    provision_shim
    provision_tonewatch
    provision_secrets
    provision_tls
    write_stack_env
    render_redis_acl
}

# ---------------------------------------------------------------- processes

pid_of() { cat "$RUNDIR/$1.pid" 2>/dev/null || true; }
# a killed service whose parent is gone can linger as a zombie: that is not alive
alive() {
    local p; p=$(pid_of "$1")
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ]
}

# stop NAME: TERM the process group started by us, then KILL after 10 s
stop_pid() {
    local name=$1 p i
    p=$(pid_of "$name")
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
        for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then
            log "$name did not stop on TERM; KILL"
            kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
        fi
    fi
    rm -f "$RUNDIR/$name.pid"
}

# is something listening on 127.0.0.1:PORT? (read /proc: a probe connection
# would show up as a protocol error in the service's log)
port_listening() {   # port_listening PORT [ADDRESS, default 127.0.0.1]
    local hex addr; hex=$(printf '%04X' "$1")
    addr=$(IFS=.; set -- ${2:-127.0.0.1}; printf '%02X%02X%02X%02X' "$4" "$3" "$2" "$1")
    grep -q "^ *[0-9]*: $addr:$hex 00000000:0000 0A" /proc/net/tcp
}

ast_cli() { timeout 10 chroot "$AST" asterisk -rx "$1"; }
node_cli() { timeout 10 chroot "$AST" asterisk -C "/etc/asterisk-$1/asterisk.conf" -rx "$2"; }

# ---------------------------------------------------------------- configs

render_configs() {   # render_configs [ETC, default the root's /etc/asterisk]
    load_secrets
    local etc=${1:-$AST/etc/asterisk} f name
    mkdir -p "$etc"
    find "$etc" -maxdepth 1 -type f -name '*.conf' -delete
    for f in "$REPO"/dialplan/*; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        case $name in
            *.conf.in) sed -e "s/@AMI_SECRET@/$AMI_SECRET/g" -e "s/@AMI_LISTENER_SECRET@/$AMI_LISTENER_SECRET/g" \
                           -e "s/@SIP_PASSWORD@/$SIP_PASSWORD/g" \
                           "$f" > "$etc/${name%.in}" ;;
            *.conf)    cp "$f" "$etc/$name" ;;
        esac
    done
    if [ ! -f "$etc/extensions.conf" ]; then
        log "dialplan/extensions.conf is missing: using a placeholder dialplan"
        cat > "$etc/extensions.conf" <<'EOF'
; placeholder written by docker/stack.sh: dialplan/extensions.conf is missing
[ics-inmate]
exten => _X.,1,Dial(PJSIP/${EXTEN},20)
[ics-outside]
exten => _X.,1,Hangup()
EOF
    fi
    # the lab's AMI user for the tests' tap and the demo (every event, CLI commands): lab only
    printf '[ics-lab]\nsecret = %s\ndeny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\nread = all\nwrite = all\n' \
        "$AMI_LAB_SECRET" > "$etc/manager_lab.conf"
    if grep -q '@[A-Z_]*@' "$etc"/*.conf; then
        die "unrendered placeholder in: $(grep -l '@[A-Z_]*@' "$etc"/*.conf | xargs -n1 basename | tr '\n' ' ')"
    fi
    chmod 640 "$etc"/*.conf
}

prepare_root() {
    mkdir -p "$SOUNDS/prompts" "$SOUNDS/names" "$SOUNDS/facilities" \
             "$AST/var/spool/asterisk/monitor" "$AST/run/asterisk" "$AST/var/cache/asterisk"
    # Asterisk's sounds dir is /usr/share/asterisk/sounds: point ics/ at the
    # project's directory with a relative link, valid inside and outside the root
    ln -sfn ../../../../var/lib/asterisk/sounds/ics "$AST/usr/share/asterisk/sounds/ics"
    cp /etc/hosts "$AST/etc/hosts"
    in_root chown -R asterisk:asterisk /etc/asterisk /var/run/asterisk /var/lib/asterisk \
        /var/log/asterisk /var/spool/asterisk /var/cache/asterisk
}

generate_prompts() {
    [ -f "$REPO/prompts/generate.py" ] || return 0
    # every up: the generator renders only prompts that are missing, so a
    # manifest that grew is caught up (about a second when nothing is new)
    if ! stack_env "$VENV/bin/python" "$REPO/prompts/generate.py" --out "$SOUNDS/prompts" \
            >>"$LOGDIR/prompts.log" 2>&1; then
        log "warning: prompts/generate.py failed (log: $LOGDIR/prompts.log)"
        tail -n 5 "$LOGDIR/prompts.log" >&2 || true
    fi
    in_root chown -R asterisk:asterisk /var/lib/asterisk/sounds/ics
}

# run a command with stack.env in its environment
stack_env() { ( set -a; . "$STACK/stack.env"; set +a; exec "$@" ); }

# ---------------------------------------------------------------- up / down

start_asterisk() {   # start_asterisk [NODE]: the single box's, or a cluster node's (-C its asterisk.conf)
    local node=${1:-} name=asterisk suffix= conf=()
    if [ -n "$node" ]; then name=asterisk-$node suffix=-$node conf=(-C "/etc/asterisk-$node/asterisk.conf"); fi
    if alive "$name"; then return 0; fi
    # a fresh registrar on every start: contacts from an earlier run point at
    # phones that are gone
    rm -f "$AST/var/lib/asterisk$suffix/astdb.sqlite3" "$AST/run/asterisk$suffix/asterisk.ctl" \
          "$AST/run/asterisk$suffix/asterisk.pid"
    log "starting $name (user asterisk)"
    local preload=
    [ -f "$AST$SHIM" ] && preload=$SHIM
    setsid chroot --userspec=asterisk:asterisk "$AST" \
        env -i HOME=/var/lib/asterisk PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        LD_PRELOAD="$preload" asterisk -f -n "${conf[@]}" </dev/null >>"$LOGDIR/$name.log" 2>&1 &
    echo $! > "$RUNDIR/$name.pid"
    local i
    for i in $(seq 60); do
        alive "$name" || { tail -n 20 "$LOGDIR/$name.log" >&2; die "$name exited during start"; }
        if [ -S "$AST/run/asterisk$suffix/asterisk.ctl" ] \
                && timeout 10 chroot "$AST" asterisk "${conf[@]}" -rx "core waitfullybooted" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    die "$name did not finish booting in 15 s (log: $LOGDIR/$name.log)"
}

start_redis() {
    if [ -n "$CLUSTER" ]; then
        log "starting a Redis Cluster (3 masters, 3 replicas) on 127.0.0.1:$CLUSTER_PORT-$((CLUSTER_PORT + 5))"
        render_redis_acl
        ICS_REDIS_ACLFILE=$REDIS_DIR/users.acl ICS_REDIS_ADMIN_PASSWORD=$REDIS_ADMIN_PASSWORD \
            ICS_REDIS_TLS_DIR=${TLS:+$TLS_DIR} bash "$CLUSTER_SH" start "$STACK/redis-cluster" "$CLUSTER_PORT"
        return 0
    fi
    if alive redis; then  # running: users changed since it started (an upgrade's new permission) load now
        if [ -n "${ACL_CHANGED:-}" ]; then
            [ "$(rcli acl load 2>/dev/null)" = OK ] || die "redis-server refused ACL LOAD of $REDIS_DIR/users.acl"
        fi
        return 0
    fi
    mkdir -p "$REDIS_DIR"
    log "starting redis-server on 127.0.0.1:$REDIS_PORT${TLS:+ (TLS only)}"
    render_redis_acl
    # shellcheck disable=SC2046  # (paths under $STACK: no spaces)
    redis-server --bind 127.0.0.1 $(redis_listen "$REDIS_PORT") --dir "$REDIS_DIR" --aclfile "$REDIS_DIR/users.acl" \
        --appendonly yes --appendfsync everysec --save '' \
        --daemonize yes --pidfile "$RUNDIR/redis.pid" --logfile "$LOGDIR/redis.log"
    local i
    for i in $(seq 50); do
        [ "$(rcli ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    die "redis-server did not answer on 127.0.0.1:$REDIS_PORT (log: $LOGDIR/redis.log)"
}

start_service() {   # start_service NAME EXECUTABLE [ENV FILE, default stack.env]
    local name=$1 exe=$VENV/bin/$2 env=${3:-$STACK/stack.env}
    if [ ! -x "$exe" ]; then log "$2 not installed yet: not started"; return 0; fi
    if alive "$name"; then return 0; fi
    log "starting $name ($2)"
    # then the service's own credentials (fastagi.env, ami.env: its Redis user, the listener's AMI
    # secret), read after the stack's or node's env as a systemd unit's EnvironmentFile
    local own=$STACK/${name%%-*}.env
    [ -f "$own" ] || own=/dev/null
    setsid bash -c 'set -a; . "$1"; . "$2"; set +a; shift 2; exec "$@"' _ "$env" "$own" "$exe" \
        </dev/null >>"$LOGDIR/$name.log" 2>&1 &
    echo $! > "$RUNDIR/$name.pid"
}

# keys stored before hash tags renamed as icsctl's Redis user (it alone may RESTORE), before
# ics-fastagi starts: that refuses to start on them (README, Upgrading). Silent when nothing to do.
migrate_keys() {
    [ -x "$VENV/bin/icsctl" ] || return 0
    local out
    out=$(stack_env "$VENV/bin/icsctl" keys migrate --quiet 2>&1) \
        || { printf '%s\n' "$out" >&2; die "icsctl keys migrate failed: ics-fastagi would not start"; }
    [ -z "$out" ] || log "keys stored before hash tags renamed (icsctl keys migrate):"$'\n'"$out"
}

wait_listening() {   # wait_listening NAME PORT [ADDRESS, default 127.0.0.1]: the service's port answers
    local name=$1 port=$2 addr=${3:-127.0.0.1} i
    [ -f "$RUNDIR/$name.pid" ] || return 0
    for i in $(seq 100); do
        port_listening "$port" "$addr" && return 0
        alive "$name" || { tail -n 20 "$LOGDIR/$name.log" >&2; die "$name exited (log: $LOGDIR/$name.log)"; }
        sleep 0.2
    done
    die "$name did not listen on $addr:$port in 20 s"
}

cmd_up() {
    need_root
    local t0=$SECONDS
    cmd_provision
    mkdir -p "$LOGDIR" "$RUNDIR"
    render_configs
    prepare_root
    generate_prompts
    start_redis
    migrate_keys
    start_asterisk
    start_service recorder ics-recorder   # before the first call: a recorded call needs it
    start_service fastagi ics-fastagi
    start_service ami ics-ami
    wait_listening fastagi "$FASTAGI_PORT"
    wait_listening recorder "$RECORDER_PORT"
    if [ -f "$RUNDIR/ami.pid" ]; then
        sleep 0.5
        alive ami || { tail -n 20 "$LOGDIR/ami.log" >&2; die "ics-ami exited (log: $LOGDIR/ami.log)"; }
    fi
    log "up in $((SECONDS - t0)) s; env: $STACK/stack.env; logs: $LOGDIR"
}

cmd_down() {
    need_root
    stop_cluster
    stop_pid ami
    stop_pid fastagi
    stop_pid recorder
    if alive asterisk; then
        ast_cli "core stop now" >/dev/null 2>&1 || true
        local i p; p=$(pid_of asterisk)
        for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    fi
    stop_pid asterisk
    stop_pid redis
    [ -d "$STACK/redis-cluster" ] && bash "$CLUSTER_SH" stop "$STACK/redis-cluster"
    log "down"
}

cmd_status() {
    local rc=0 name exe
    local services="asterisk redis fastagi ami recorder"
    [ -n "$CLUSTER" ] && services="asterisk fastagi ami recorder"
    for name in $services; do
        case $name in fastagi | ami | recorder) exe=$VENV/bin/ics-$name ;; *) exe= ;; esac
        if alive "$name"; then
            printf '%-9s running (pid %s)\n' "$name" "$(pid_of "$name")"
        elif [ -n "$exe" ] && [ ! -x "$exe" ]; then
            printf '%-9s not installed\n' "$name"
        else
            printf '%-9s stopped\n' "$name"; rc=3
        fi
    done
    if alive asterisk; then
        ast_cli "pjsip show contacts" 2>/dev/null | grep -E '^ *Contact:' | grep -v '<Aor/ContactUri' || true
    fi
    # the listener's heartbeat and live calls / capacity.max_calls (informational: rc unchanged)
    if { alive redis || [ -n "$CLUSTER" ]; } && [ -x "$VENV/bin/icsctl" ] && [ -f "$STACK/stack.env" ]; then
        stack_env "$VENV/bin/icsctl" status 2>/dev/null || true
    fi
    return $rc
}

cmd_reload() {
    need_root
    alive asterisk || die "Asterisk is not running (docker/stack.sh up)"
    render_configs
    prepare_root
    ast_cli "dialplan reload"
    ast_cli "module reload res_pjsip.so"
    ast_cli "manager reload"
}

# ---------------------------------------------------------------- cluster (README, Cluster)

# A node's configs: dialplan/ rendered as for the single box, then made the node's: its
# own dirs (asterisk.conf), SIP, RTP, AMI and FastAGI on its address, phones reached
# through Kamailio (each AOR's contact) and authenticated there, not here (no auth =;
# SIP is taken only from Kamailio's address: res_pjsip_acl), and an endpoint for
# Kamailio's OPTIONS pings.
render_node() {   # render_node NODE ADDRESS
    local node=$1 addr=$2 etc=$AST/etc/asterisk-$1
    render_configs "$etc"
    sed -i -e 's/^\[directories\](!)/[directories]/' \
        -e "s#^\(ast\(etc\|run\|log\|db\|key\|cache\)dir => .*\)\$#\1-$node#" "$etc/asterisk.conf"
    sed -i -e "s/^bind = 127\.0\.0\.1:/bind = $addr:/" -e "s/^media_address = 127\.0\.0\.1\$/media_address = $addr/" \
        -e '/^auth = /d' -e "s/^\[\([^]]*\)\](phone-aor)\$/&\ncontact = sip:\1@$KAMAILIO_ADDR:5060/" "$etc/pjsip.conf"
    printf '%s\n' '' '; ---- this call node behind Kamailio (docker/stack.sh render_node) ----' \
        '[kamailio](outside-endpoint)' '' '[kamailio-only]' 'type = acl' 'deny = 0.0.0.0/0.0.0.0' \
        "permit = $KAMAILIO_ADDR/255.255.255.255" >> "$etc/pjsip.conf"
    sed -i "s/^bindaddr = 127\.0\.0\.1\$/bindaddr = $addr/" "$etc/manager.conf"
    sed -i "s/^bindaddr = 127\.0\.0\.1\$/bindaddr = $addr/" "$etc/http.conf"   # res_prometheus
    sed -i "s#^ICS_AGI=agi://127\.0\.0\.1:#ICS_AGI=agi://$addr:#" "$etc/extensions.conf"
    printf 'load = res_pjsip_acl.so         ; SIP only from Kamailio (docker/stack.sh render_node)\n' \
        >> "$etc/modules.conf"
    if grep -q '^[^;]*127\.0\.0\.1' "$etc/pjsip.conf" "$etc/extensions.conf"; then
        die "node $node: a 127.0.0.1 left in its configs (render_node does not know a new setting)"
    fi
    mkdir -p "$AST/run/asterisk-$node" "$AST/var/log/asterisk-$node" "$AST/var/lib/asterisk-$node" \
             "$AST/var/cache/asterisk-$node"
    in_root chown -R asterisk:asterisk "/etc/asterisk-$node" "/run/asterisk-$node" "/var/log/asterisk-$node" \
        "/var/lib/asterisk-$node" "/var/cache/asterisk-$node"
    ( umask 077
      { cat "$STACK/stack.env"
        echo "ICS_NODE_ID=$node"
        echo "ICS_AMI_HOST=$addr"
        echo "ICS_FASTAGI_HOST=$addr"
        echo "ICS_RECORDINGS_RECORDER_HOST=$addr"
        echo "ICS_AMI_TAP_HOST=$addr"  # the three-way audio tap: each listener on its own node
        echo "ICS_CAPACITY_RTP_CONF=$etc/rtp.conf"
        echo "ICS_METRICS_HOST=$addr"   # /metrics and /health of the node's services on its address
        echo "ICS_NODE_ADDRESS=$addr"; } > "$STACK/node-$node.env" )
}

render_kamailio() {
    load_secrets
    mkdir -p "$KAMAILIO_DIR"
    local entry
    for entry in $CLUSTER_NODES; do echo "1 sip:${entry#*:}:5060 0 0 node=${entry%%:*}"; done \
        > "$KAMAILIO_DIR/dispatcher.list"
    sed -e "s/@ADDR@/$KAMAILIO_ADDR/g" -e "s/@SIP_PASSWORD@/$SIP_PASSWORD/g" \
        -e "s#@DISPATCHER_LIST@#$KAMAILIO_DIR/dispatcher.list#g" -e "s#@CTL@#$KAMAILIO_DIR/kamailio.ctl#g" \
        "$REPO/dialplan/kamailio/kamailio.cfg" > "$KAMAILIO_DIR/kamailio.cfg"
    if grep -q '@[A-Z_]*@' "$KAMAILIO_DIR/kamailio.cfg"; then die "unrendered placeholder in kamailio.cfg"; fi
    chown -R kamailio:kamailio "$KAMAILIO_DIR"
    chmod 640 "$KAMAILIO_DIR/kamailio.cfg"
    kamailio -c -f "$KAMAILIO_DIR/kamailio.cfg" >"$LOGDIR/kamailio-check.log" 2>&1 \
        || { tail -n 20 "$LOGDIR/kamailio-check.log" >&2; die "kamailio.cfg does not check"; }
}

start_kamailio() {
    if alive kamailio; then return 0; fi
    log "starting Kamailio on $KAMAILIO_ADDR:5060 (user kamailio)"
    rm -f "$KAMAILIO_DIR/kamailio.ctl"
    setsid kamailio -DD -E -f "$KAMAILIO_DIR/kamailio.cfg" -u kamailio -g kamailio -m 64 -M 8 \
        </dev/null >>"$LOGDIR/kamailio.log" 2>&1 &
    echo $! > "$RUNDIR/kamailio.pid"
    local i
    for i in $(seq 50); do
        alive kamailio || { tail -n 20 "$LOGDIR/kamailio.log" >&2; die "Kamailio exited during start"; }
        [ -S "$KAMAILIO_DIR/kamailio.ctl" ] && return 0
        sleep 0.1
    done
    die "Kamailio did not start in 5 s (log: $LOGDIR/kamailio.log)"
}

# kamcmd against the cluster's Kamailio (e.g. dispatcher.list)
kam_cmd() { kamcmd -s "unix:$KAMAILIO_DIR/kamailio.ctl" "$@"; }

cmd_up_cluster() {
    need_root
    local t0=$SECONDS entry node addr
    cmd_provision
    mkdir -p "$LOGDIR" "$RUNDIR"
    prepare_root
    generate_prompts
    start_redis
    migrate_keys
    for entry in $CLUSTER_NODES; do
        node=${entry%%:*} addr=${entry#*:}
        render_node "$node" "$addr"
        start_asterisk "$node"
        start_service "recorder-$node" ics-recorder "$STACK/node-$node.env"
        start_service "fastagi-$node" ics-fastagi "$STACK/node-$node.env"
        start_service "ami-$node" ics-ami "$STACK/node-$node.env"
    done
    for entry in $CLUSTER_NODES; do
        wait_listening "fastagi-${entry%%:*}" "$FASTAGI_PORT" "${entry#*:}"
        wait_listening "recorder-${entry%%:*}" "$RECORDER_PORT" "${entry#*:}"
    done
    render_kamailio
    start_kamailio
    log "cluster up in $((SECONDS - t0)) s: Kamailio $KAMAILIO_ADDR:5060, nodes $CLUSTER_NODES; env: $STACK/node-*.env"
}

# every cluster process with a pidfile (whatever ICS_CLUSTER_NODES says now)
stop_cluster() {
    local f name node i p
    stop_pid kamailio
    for f in "$RUNDIR"/ami-*.pid "$RUNDIR"/fastagi-*.pid "$RUNDIR"/recorder-*.pid; do
        if [ -e "$f" ]; then stop_pid "$(basename "$f" .pid)"; fi
    done
    for f in "$RUNDIR"/asterisk-*.pid; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .pid) node=${name#asterisk-}
        if alive "$name"; then
            node_cli "$node" "core stop now" >/dev/null 2>&1 || true
            p=$(pid_of "$name")
            for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        fi
        stop_pid "$name"
    done
}

cmd_down_cluster() {
    need_root
    stop_cluster
    log "cluster down (Redis and any single-box stack left running: docker/stack.sh down)"
}

cmd_status_cluster() {
    local rc=0 entry node name
    for entry in $CLUSTER_NODES; do
        node=${entry%%:*}
        for name in "asterisk-$node" "fastagi-$node" "ami-$node" "recorder-$node"; do
            if alive "$name"; then printf '%-12s running (pid %s)\n' "$name" "$(pid_of "$name")"
            else printf '%-12s stopped\n' "$name"; rc=3; fi
        done
    done
    if alive kamailio; then
        printf '%-12s running (pid %s)\n' kamailio "$(pid_of kamailio)"
        kam_cmd dispatcher.list 2>/dev/null | grep -E 'URI|FLAGS' || true
    else
        printf '%-12s stopped\n' kamailio; rc=3
    fi
    return $rc
}

cmd_venv() {
    have_pkg python3.11-venv || { need_root; HOST_PACKAGES=(python3.11-venv); provision_host; }
    provision_venv
}

case ${1:-} in
    venv)      cmd_venv ;;
    provision) cmd_provision ;;
    up)        cmd_up ;;
    down)      cmd_down ;;
    status)    cmd_status ;;
    reload)    cmd_reload ;;
    up-cluster)     cmd_up_cluster ;;
    down-cluster)   cmd_down_cluster ;;
    status-cluster) cmd_status_cluster ;;
    *) echo "usage: $0 venv|provision|up|down|status|reload|up-cluster|down-cluster|status-cluster" >&2; exit 2 ;;
esac

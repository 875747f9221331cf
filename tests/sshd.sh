#!/usr/bin/env bash
# A throwaway OpenSSH server on loopback for the SSH tests (CI and humans).
#
#   eval "$(tests/sshd.sh start)"   start it; prints the export lines below
#   tests/sshd.sh env               print them again for a running server
#   tests/sshd.sh stop              stop it and delete its keys
#
# It listens on 127.0.0.1 (and ::1 when the machine has IPv6) on a free port,
# never on any other address, with a fresh host key and a fresh client key
# in its state directory ($SSHD_DIR, default target/sshd). Only that client
# key may log in, as the current user. Needs the openssh-server package
# (Debian: apt-get install openssh-server). The exported variables:
#
#   BSYNC_TEST_SSH   user@127.0.0.1:PORT, what tests/ssh.rs and
#                    `make test-remote REMOTE=...` connect to
#   BSYNC_SSH        the ssh command with the client key and options that
#                    skip host-key prompts; bsync's -t uses it
#   SSH_OPTS         the same options alone, for `make test-remote`
set -euo pipefail

cd "$(dirname "$0")/.."
dir=${SSHD_DIR:-${CARGO_TARGET_DIR:-target}/sshd}
# Absolute, so that the exported key path works from any directory.
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac
sshd=${SSHD:-/usr/sbin/sshd}

say() { printf 'sshd.sh: %s\n' "$*" >&2; }
die() { printf 'sshd.sh: error: %s\n' "$*" >&2; exit 1; }

running() { [[ -s $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

print_env() {
    local port user opts
    port=$(cat "$dir/port")
    user=$(id -un)
    opts="-i $dir/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    opts+=" -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=10"
    printf 'export BSYNC_TEST_SSH=%q\n' "$user@127.0.0.1:$port"
    printf 'export BSYNC_SSH=%q\n' "ssh $opts"
    printf 'export SSH_OPTS=%q\n' "$opts"
}

# A port nothing listens on (no python or ss needed: /proc/net/tcp*).
free_port() {
    local port hex i
    for ((i = 0; i < 100; i++)); do
        port=$((20000 + RANDOM % 40000))
        printf -v hex ':%04X ' "$port"
        if ! cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -q "$hex"; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

start() {
    [[ -x $sshd ]] || die "$sshd not found (Debian: apt-get install openssh-server)"
    command -v ssh-keygen >/dev/null || die "ssh-keygen not found (apt-get install openssh-client)"
    if running; then
        print_env
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    chmod 700 "$dir"
    ssh-keygen -q -t ed25519 -N '' -C bsync-test-host -f "$dir/host_key"
    ssh-keygen -q -t ed25519 -N '' -C bsync-test-client -f "$dir/client_key"
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    chmod 600 "$dir/authorized_keys"
    local port try
    for try in 1 2 3 4 5; do
        port=$(free_port)
        if start_on "$port"; then
            echo "$port" >"$dir/port"
            print_env
            return
        fi
        say "port $port: sshd did not start (attempt $try); see $dir/log"
    done
    die "sshd did not start; see $dir/log"
}

# Start sshd on PORT; false if it does not come up.
start_on() {
    local port=$1 listen6='' sftp i
    # ::1 only where the kernel has IPv6 loopback; sshd skips what it
    # cannot bind as long as one address works.
    if [[ -e /proc/net/if_inet6 ]] && grep -q '^0\{31\}1 ' /proc/net/if_inet6; then
        listen6="ListenAddress [::1]:$port"
    fi
    sftp=$(for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
        /usr/libexec/sftp-server; do [[ -x $p ]] && echo "$p" && break; done || true)
    # The privilege-separation directory Debian's sshd insists on.
    [[ $(id -u) != 0 ]] || mkdir -p /run/sshd
    cat >"$dir/sshd_config" <<EOF
ListenAddress 127.0.0.1:$port
$listen6
HostKey $dir/host_key
PidFile $dir/pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers $(id -un)
# The key files live under the build tree, not a home directory.
StrictModes no
UsePAM no
MaxStartups 64:30:128
MaxSessions 64
${sftp:+Subsystem sftp $sftp}
EOF
    "$sshd" -t -f "$dir/sshd_config" || die "sshd rejected $dir/sshd_config"
    rm -f "$dir/pid"
    "$sshd" -f "$dir/sshd_config" -E "$dir/log" || return 1
    for ((i = 0; i < 100; i++)); do
        running && return 0
        sleep 0.05
    done
    return 1
}

stop() {
    if running; then
        kill "$(cat "$dir/pid")"
    fi
    rm -rf "$dir"
}

case ${1:-} in
start) start ;;
stop) stop ;;
env)
    running || die "no sshd running from $dir (tests/sshd.sh start)"
    print_env
    ;;
*) sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac

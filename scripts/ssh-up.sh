#!/usr/bin/env bash
# Start a real OpenSSH server on loopback for ft's `--cluster` tests: a "laptop" (root, the
# test runner) logs in as a second local user whose login node is this host's SLURM cluster
# (scripts/slurm-up.sh).
#
#   user      ftremote (FT_SSH_USER): key-only login, no password, nothing but this sshd lets it in
#   port 2222 (FT_SSH_PORT) on 127.0.0.1: the key is enough
#   port 2223 (FT_SSH_PORT + 1): the key AND a password, as a cluster with a second factor asks;
#             ft must print how to open a master connection, never prompt and never hang
#   log       /var/log/ft-test-sshd.log, LogLevel VERBOSE: one "Accepted publickey" line per
#             authentication (the tests count them to see a ControlMaster connection reused)
#   client    /etc/ft-test-ssh/id_ed25519 (root only) and known_hosts (host key alias ft-test-sshd)
#
# Usage: bash scripts/ssh-up.sh [PATH ...]
#   Each PATH (the Python that runs ft, the checkout) is made readable to the user: every
#   folder above it that others cannot enter gets an ACL entry letting this one user enter
#   (search only, no listing), e.g. /root when Python lives under /root/.pyenv.
# Idempotent: a server already running with the same config is kept. Needs root, Debian's
# openssh-server and acl packages (see .ci/run).
set -euo pipefail

USER_NAME="${FT_SSH_USER:-ftremote}"
PORT="${FT_SSH_PORT:-2222}"
SECOND_FACTOR_PORT=$((PORT + 1))
DIR=/etc/ft-test-ssh
LOG=/var/log/ft-test-sshd.log
PIDFILE=/run/ft-test-sshd.pid

die() { echo "ssh-up: ERROR: $*" >&2; exit 1; }
log() { echo "ssh-up: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it adds a user and starts sshd)"
for b in /usr/sbin/sshd ssh ssh-keygen setfacl useradd; do
    command -v "$b" >/dev/null 2>&1 || die "'$b' not found: apt-get install openssh-server acl"
done

# ---------------------------------------------------------------- the second user
if ! id "$USER_NAME" >/dev/null 2>&1; then
    log "adding user $USER_NAME"
    useradd --create-home --shell /bin/bash "$USER_NAME"
fi
# '*': no password works, but the account is not locked ('!' would refuse key logins too).
usermod -p '*' "$USER_NAME"

# ---------------------------------------------------------------- keys
mkdir -p "$DIR/authorized_keys"
chmod 755 "$DIR" "$DIR/authorized_keys"
[ -s "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C ft-test-sshd -f "$DIR/ssh_host_ed25519_key"
[ -s "$DIR/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ft-test-client -f "$DIR/id_ed25519"
chmod 600 "$DIR/id_ed25519" "$DIR/ssh_host_ed25519_key"
install -m 644 "$DIR/id_ed25519.pub" "$DIR/authorized_keys/$USER_NAME"
echo "ft-test-sshd $(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" > "$DIR/known_hosts.new"
mv "$DIR/known_hosts.new" "$DIR/known_hosts"

# ---------------------------------------------------------------- what the user must read
grant() {
    local path dir="" part
    path="$(readlink -f "$1")" || return 0
    # From / down: a folder is enterable only when every folder above it is.
    IFS=/ read -r -a parts <<< "${path#/}"
    for part in "${parts[@]}"; do
        dir="$dir/$part"
        [ "$dir" = "$path" ] && [ ! -d "$dir" ] && break
        if ! su -s /bin/sh -c "test -x '$dir'" "$USER_NAME" 2>/dev/null; then
            log "letting $USER_NAME enter $dir (ACL, search only)"
            setfacl -m "u:$USER_NAME:x" "$dir"
        fi
    done
}
for path in "$@"; do
    grant "$path"
done

# ---------------------------------------------------------------- sshd
cat > "$DIR/sshd_config.new" <<EOF
# Written by scripts/ssh-up.sh: ft's --cluster tests only. Loopback, one user, keys.
Port $PORT
Port $SECOND_FACTOR_PORT
ListenAddress 127.0.0.1
HostKey $DIR/ssh_host_ed25519_key
PidFile $PIDFILE
LogLevel VERBOSE
AuthorizedKeysFile $DIR/authorized_keys/%u
AllowUsers $USER_NAME
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowAgentForwarding no
PermitUserEnvironment no
AcceptEnv none
Match LocalPort $SECOND_FACTOR_PORT
    PasswordAuthentication yes
    AuthenticationMethods publickey,password
EOF

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if running && cmp -s "$DIR/sshd_config.new" "$DIR/sshd_config"; then
    rm -f "$DIR/sshd_config.new"
    log "sshd already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT and :$SECOND_FACTOR_PORT"
else
    if running; then
        log "config changed: restarting sshd"
        kill "$(cat "$PIDFILE")" || true
        for _ in $(seq 1 50); do running || break; sleep 0.1; done
    fi
    mv "$DIR/sshd_config.new" "$DIR/sshd_config"
    mkdir -p /run/sshd
    /usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd refused its config $DIR/sshd_config"
    /usr/sbin/sshd -f "$DIR/sshd_config" -E "$LOG"
    for _ in $(seq 1 50); do running && break; sleep 0.1; done
    running || { tail -n 20 "$LOG" >&2; die "sshd did not start"; }
    log "sshd started (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT and :$SECOND_FACTOR_PORT, log $LOG"
fi

# ---------------------------------------------------------------- check a login
ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -i "$DIR/id_ed25519" \
    -o HostKeyAlias=ft-test-sshd -o UserKnownHostsFile="$DIR/known_hosts" -o StrictHostKeyChecking=yes \
    -o ConnectTimeout=10 -p "$PORT" -l "$USER_NAME" 127.0.0.1 true \
    || { tail -n 20 "$LOG" >&2; die "cannot log in as $USER_NAME on 127.0.0.1:$PORT"; }
log "ok: ssh -p $PORT $USER_NAME@127.0.0.1 with $DIR/id_ed25519"

#!/bin/sh
# Provisions the kernelbox sandbox image. Runs as root inside the image's root filesystem:
# in a chroot (build-offline.sh) or in a Dockerfile RUN step.
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

apt-get update -q
# python3-munkres and python3-unicodedata2 satisfy fonttools' optional dependencies, which
# would otherwise pull scipy, pythran and a compiler toolchain into the image.
apt-get install -y -q --no-install-recommends \
    python3 python3-ipykernel python3-jupyter-client \
    python3-numpy python3-pandas python3-matplotlib python3-pil python3-pip \
    python3-munkres python3-unicodedata2 \
    nftables dnsmasq-base socat tini procps ca-certificates
if dpkg -l gcc python3-scipy 2>/dev/null | grep -q '^ii'; then
    echo "provision: a compiler or scipy slipped into the image" >&2
    exit 1
fi

# ipykernel works without debugpy (it only turns the debugger off, and no kernelbox client
# debugs), while importing debugpy costs about 0.2 s of every kernel start. Its files go; the
# package stays registered so apt's dependency state remains consistent.
rm -rf /usr/lib/python3/dist-packages/debugpy

groupadd --gid 1000 sandbox
useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash sandbox
install -d -o 1000 -g 1000 -m 0755 /workspace
# The kernel's ZeroMQ sockets: unix sockets only the sandbox's own processes (and the server,
# through `docker exec`) can reach. No kernel port exists on any network.
install -d -o 1000 -g 1000 -m 0700 /run/kernelbox

# The network sidecar (a second container from this image, sharing its network namespace with
# the sandbox) runs dnsmasq as this uid; the firewall lets only this uid reach the upstream DNS.
groupadd --system --gid 990 kbxdns
useradd --system --uid 990 --gid 990 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin kbxdns
install -m 0755 /dev/null /usr/local/sbin/kernelbox-netd
cat > /usr/local/sbin/kernelbox-netd <<'NETD'
#!/bin/sh
# kernelbox-netd: the network sidecar of a kernelbox sandbox. The sidecar container owns the
# network namespace the sandbox joins; this script is its main process and its control command.
#
#   kernelbox-netd [run]  main process (root, under tini): closes the namespace at once with a
#                         deny-everything ruleset, points /etc/resolv.conf at 127.0.0.1, restores
#                         the last applied policy when the container restarts, and keeps dnsmasq
#                         running with the current config.
#   kernelbox-netd apply  run by the server as `docker exec -i -u 0 <sidecar> kernelbox-netd apply`:
#                         reads a policy from stdin, applies it, and exits 0 only once it is in
#                         force (ruleset committed, dnsmasq answering with the new config).
#
# apply's stdin: a header line, three length-prefixed parts (decimal byte counts; each body
# follows its header line directly, with nothing after it) and a trailer line:
#   kernelbox-netd-apply 1\n
#   nft <len>\n<body>       one nft transaction that replaces table inet kernelbox
#   dnsmasq <len>\n<body>   dnsmasq's complete config
#   state <len>\n<body>     opaque (JSON), stored as /var/lib/kernelbox/state.json
#   end\n
set -eu
umask 022
export LC_ALL=C

# Runtime state lives on a tmpfs Docker mounts anew at every start: a restarted sidecar never
# sees a stale pid, hold or ready marker. What must survive a restart lives in lib_dir.
run_dir=/dev/shm/kernelbox-netd
lib_dir=/var/lib/kernelbox
conf=$run_dir/dnsmasq.conf
dns_user=kbxdns
max_part=4194304

log() { echo "kernelbox-netd: $*" >&2; }
die() { log "$*"; exit 1; }

# The namespace's first ruleset and config, before the server applies a policy: what kernelbox
# renders for a policy of one Deny layer, without upstream servers or inbound ports (a unit test
# in src/backend/docker/firewall.rs keeps the two equal). Loopback only, never Docker's embedded
# DNS; no name resolves.
deny_ruleset() {
    uid=$(id -u "$dns_user")
    cat <<EOF
# kernelbox egress policy (generated): one transaction replacing the table.
table inet kernelbox
delete table inet kernelbox
table inet kernelbox {
    set upstream_v4 { type ipv4_addr; }
    set upstream_v6 { type ipv6_addr; }
    set learned4 { type ipv4_addr; size 65536; flags dynamic,timeout; timeout 3600s; }
    set learned6 { type ipv6_addr; size 65536; flags dynamic,timeout; timeout 3600s; }
    chain refuse {
        meta l4proto tcp reject with tcp reset
        reject with icmpx port-unreachable
    }
    chain layer0 {
        goto refuse
    }
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
    }
    chain output {
        type filter hook output priority mangle; policy drop;
        meta skuid != $uid meta l4proto { tcp, udp } th dport { 53, 853 } ip daddr != 127.0.0.1 goto refuse
        meta skuid != $uid meta l4proto { tcp, udp } th dport { 53, 853 } meta nfproto ipv6 goto refuse
        meta skuid != $uid ip daddr 127.0.0.11 goto refuse
        meta skuid $uid ct state established,related accept
        meta skuid $uid ip daddr @upstream_v4 meta l4proto { tcp, udp } th dport 53 accept
        meta skuid $uid ip6 daddr @upstream_v6 meta l4proto { tcp, udp } th dport 53 accept
        meta skuid $uid goto refuse
        meta l4proto { tcp, udp } th dport { 53, 853 } ip daddr 127.0.0.1 accept
        meta l4proto { tcp, udp } th dport { 53, 853 } goto refuse
        ip daddr 127.0.0.11 goto refuse
        oif "lo" accept
        icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
        icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } ip6 daddr ff02::/16 accept
        ip daddr @learned4 update @learned4 { ip daddr }
        ip6 daddr @learned6 update @learned6 { ip6 daddr }
        jump layer0
        accept
    }
}
EOF
}

deny_dnsmasq() {
    cat <<EOF
# kernelbox dnsmasq config (generated)
port=53
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
user=$dns_user
group=$dns_user
pid-file=
log-facility=-
cache-size=0
address=/#/
EOF
}

# Asks 127.0.0.1:53 for version.bind (CHAOS TXT), which dnsmasq answers itself, never upstream.
dns_ready() {
    python3 -I -S - "$1" <<'PY'
import os, socket, sys, time
query = os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07version\x04bind\x00\x00\x10\x00\x03"
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        try:
            sock.sendto(query, ("127.0.0.1", 53))
            if sock.recv(512)[:2] == query[:2]:
                sys.exit(0)
        except OSError:
            time.sleep(0.005)
sys.exit(1)
PY
}

# dnsmasq runs as its own uid: root without CAP_KILL signals it as that uid. It starts as root
# and drops to that uid once it is set up, and until then the signal is refused: it is sent
# again every 50 ms until dnsmasq is gone.
stop_dnsmasq() {
    pid=$(cat "$run_dir/dnsmasq.pid" 2>/dev/null || true)
    [ -n "$pid" ] || return 0
    tries=0
    while [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
        if [ $((tries % 5)) -eq 0 ]; then
            setpriv --reuid="$dns_user" --regid="$dns_user" --clear-groups kill -TERM "$pid" 2>/dev/null || true
        fi
        tries=$((tries + 1))
        [ "$tries" -le 1000 ] || die "dnsmasq (pid $pid) did not stop"
        sleep 0.01
    done
}

run() {
    mkdir -p "$run_dir" "$lib_dir"
    chmod 0755 "$run_dir"
    # An apply waits for the ready marker, and the lock keeps it out until then: the
    # deny-everything ruleset never lands over an applied policy.
    exec 9> "$run_dir/apply.lock"
    flock 9
    deny_ruleset | nft -f - || die "could not install the deny-everything ruleset"
    # A bind mount from the daemon: rewrite it in place.
    printf 'nameserver 127.0.0.1\n' > /etc/resolv.conf
    deny_dnsmasq > "$conf"
    if [ -s "$lib_dir/ruleset.nft" ] && [ -s "$lib_dir/dnsmasq.conf" ]; then
        if nft -f "$lib_dir/ruleset.nft"; then
            cp "$lib_dir/dnsmasq.conf" "$conf"
            log "restored the last applied policy"
        else
            rm -f "$lib_dir/ruleset.nft" "$lib_dir/dnsmasq.conf" "$lib_dir/state.json"
            deny_ruleset | nft -f -
            log "could not restore the last applied policy; everything stays denied"
        fi
    fi
    touch "$run_dir/ready"
    exec 9>&-
    trap 'exit 0' TERM INT
    while :; do
        while [ -e "$run_dir/hold" ]; do sleep 0.01; done
        dnsmasq --keep-in-foreground --conf-file="$conf" &
        echo $! > "$run_dir/dnsmasq.pid"
        wait $! || true
        rm -f "$run_dir/dnsmasq.pid"
        [ -e "$run_dir/hold" ] || sleep 0.2
    done
}

read_part() {
    IFS=' ' read -r name length || die "input ended before the $1 part"
    [ "$name" = "$1" ] || die "expected the $1 part, got '$name'"
    case $length in '' | *[!0-9]*) die "bad length for $1: '$length'" ;; esac
    if [ "${#length}" -gt 8 ] || [ "$length" -gt "$max_part" ]; then
        die "$1 is larger than $max_part bytes"
    fi
    head -c "$length" > "$stage/$1"
    [ "$(wc -c < "$stage/$1")" -eq "$length" ] || die "input ended inside the $1 part"
}

apply() {
    # Docker's default for a container is 0, which would let the sandbox bind port 53 (and
    # answer its own DNS, or keep dnsmasq from starting); the sidecar must be created with
    # --sysctl net.ipv4.ip_unprivileged_port_start=1024.
    [ "$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)" -ge 1024 ] ||
        die "net.ipv4.ip_unprivileged_port_start is below 1024 in this network namespace"
    tries=0
    until [ -e "$run_dir/ready" ]; do
        tries=$((tries + 1))
        [ "$tries" -le 1000 ] || die "the sidecar's main process is not up"
        sleep 0.01
    done
    exec 9> "$run_dir/apply.lock"
    flock 9
    stage=$(mktemp -d "$run_dir/stage.XXXXXX")
    trap 'rm -rf "$stage"; rm -f "$run_dir/hold"' EXIT
    IFS= read -r header || die "no input"
    [ "$header" = "kernelbox-netd-apply 1" ] || die "unknown input format: '$header'"
    read_part nft
    read_part dnsmasq
    read_part state
    IFS= read -r trailer || true
    [ "$trailer" = end ] || die "missing end line"

    dnsmasq --test --conf-file="$stage/dnsmasq" 2>"$stage/test.err" || {
        cat "$stage/test.err" >&2
        die "dnsmasq refused the config"
    }
    # Stop the resolver before the new rules go in, so it cannot learn an address for a name the
    # new policy refuses; then the new rules (one transaction: all or nothing), then the new config.
    touch "$run_dir/hold"
    stop_dnsmasq
    if ! nft -f "$stage/nft"; then
        rm -f "$run_dir/hold"
        dns_ready 5 || true
        die "nft failed to apply the ruleset; the previous policy stays in force"
    fi
    cp "$stage/nft" "$lib_dir/ruleset.nft.new"
    cp "$stage/dnsmasq" "$lib_dir/dnsmasq.conf.new"
    cp "$stage/state" "$lib_dir/state.json.new"
    cp "$stage/dnsmasq" "$conf.new"
    mv "$conf.new" "$conf"
    mv "$lib_dir/ruleset.nft.new" "$lib_dir/ruleset.nft"
    mv "$lib_dir/dnsmasq.conf.new" "$lib_dir/dnsmasq.conf"
    mv "$lib_dir/state.json.new" "$lib_dir/state.json"
    rm -f "$run_dir/hold"
    dns_ready 5 || die "dnsmasq did not come back with the new config"
}

case ${1:-run} in
run) run ;;
apply) apply ;;
*) die "usage: kernelbox-netd [run|apply]" ;;
esac
NETD

# `pip install` as the sandbox user goes to ~/.local without the PEP 668 refusal. Not by
# `user = true`, which would make every pip call a user install and refuse `--target` and
# `--prefix` ("Can not combine '--user' and '--target'"): pip installs to the user site by itself
# when site-packages is not writable, as it is not for the sandbox user, and leaves `--target`,
# `--prefix` and `--root` to where they say.
cat > /etc/pip.conf <<'PIP'
[global]
break-system-packages = true
disable-pip-version-check = true
no-warn-script-location = true
PIP

# Bound each output message. ipykernel otherwise batches everything printed between flushes
# into one message (100 MB of prints arrive as one 100 MB frame), and sends a traceback or a
# result whole. The server closes the channel of a kernel whose message passes its limit and
# restarts it; this keeps a well-behaved kernel under that limit, so large output is cut with a
# note instead. The server's own caps do not rely on it: it trusts nothing the sandbox sends.
cat > /usr/lib/python3/dist-packages/kernelbox_output.py <<'PY'
"""kernelbox: keep every message the kernel sends under the server's limit.

Printed text goes out at least every 64 KiB (a single large write is split). An error, a result
or a display whose message would pass the limit is cut to fit, with a note saying so.
"""
import json
import os

from ipykernel.iostream import OutStream
from jupyter_client.session import Session

FLUSH_AT = 64 * 1024
# Half the server's limit, leaving room for the JSON escapes of what is kept.
LIMIT = max(64 * 1024, int(os.environ.get("KERNELBOX_MAX_MESSAGE_BYTES", 16 << 20)) // 2)
# An error is text: a quarter of the server's text cap is more than anyone reads of a traceback.
ERROR_KEEP = max(4096, min(LIMIT, int(os.environ.get("KERNELBOX_OUTPUT_LIMIT_BYTES", 4 << 20))) // 4)
NOTE = "\n[kernelbox: {} characters cut here to keep the message under the server's limit]"
_write = OutStream.write
_send = Session.send


def _bounded_write(self, string):
    if not isinstance(string, str) or len(string) <= FLUSH_AT:
        written = _write(self, string)
        if self._buffer.tell() >= FLUSH_AT and self._is_master_process():
            self.flush()
        return written
    for start in range(0, len(string), FLUSH_AT):
        _write(self, string[start:start + FLUSH_AT])
        if self._is_master_process():
            self.flush()
    return len(string)


def _chars(value):
    """About the size of a value as JSON text, without writing it out."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(key)) + _chars(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_chars(item) for item in value)
    return 8


def _encoded(content):
    try:
        return len(json.dumps(content, ensure_ascii=False, default=str).encode("utf8", "surrogateescape"))
    except (TypeError, ValueError):
        return _chars(content) * 6


def _cut(text, keep):
    if not isinstance(text, str) or len(text) <= keep:
        return text
    return text[:keep] + NOTE.format(len(text) - keep)


def _cut_error(content, keep):
    content = dict(content)
    content["evalue"] = _cut(content.get("evalue", ""), keep // 4)
    lines, left = [], keep
    traceback = content.get("traceback") or []
    for index, line in enumerate(traceback):
        if left <= 0:
            lines.append("[kernelbox: {} more traceback lines cut]".format(len(traceback) - index))
            break
        line = _cut(line if isinstance(line, str) else str(line), left)
        left -= len(line)
        lines.append(line)
    content["traceback"] = lines
    return content


def _cut_data(content, keep):
    content = dict(content)
    data = content.get("data") or {}
    text = data.get("text/plain", "")
    if not isinstance(text, str):
        text = str(text)
    dropped = sorted(mime for mime in data if mime != "text/plain")
    note = ""
    if dropped:
        note = "\n[kernelbox: {} dropped to keep the message under the server's limit]".format(
            ", ".join(dropped))
    content["data"] = {"text/plain": _cut(text, keep) + note}
    return content


def _bounded(msg_type, content):
    if not isinstance(content, dict):
        return content
    if msg_type == "error" or "traceback" in content:
        return content if _chars(content) <= ERROR_KEEP else _cut_error(content, ERROR_KEEP)
    if "data" not in content or _chars(content) * 6 < LIMIT or _encoded(content) <= LIMIT:
        return content
    for keep in (LIMIT // 2, LIMIT // 8, 1024):
        cut = _cut_data(content, keep)
        if _encoded(cut) <= LIMIT:
            return cut
    return cut


def _bounded_send(self, stream, msg_or_type, content=None, *args, **kwargs):
    if isinstance(msg_or_type, dict):
        msg_type = msg_or_type.get("header", {}).get("msg_type") or msg_or_type.get("msg_type")
        msg_or_type["content"] = _bounded(msg_type, msg_or_type.get("content"))
    else:
        content = _bounded(msg_or_type, content)
    return _send(self, stream, msg_or_type, content, *args, **kwargs)


OutStream.write = _bounded_write
Session.send = _bounded_send
PY
mkdir -p /etc/ipython
cat > /etc/ipython/ipython_kernel_config.py <<'PY'
# kernelbox: load the output bound into every kernel, leaving the user namespace clean.
c.IPKernelApp.exec_lines = ["import kernelbox_output as _kernelbox_output; del _kernelbox_output"]
# History in memory: In, Out and %history work for the kernel's life, and no cell waits on an
# SQLite commit to the container's disk (measured here: 1+1 p50 7.2-9.1 ms with the file,
# 6.3-6.6 ms without).
c.HistoryManager.hist_file = ":memory:"
PY

# Build matplotlib's font cache and IPython's profile as the sandbox user, so the first plot
# and the first kernel start do not pay for them.
runuser -u sandbox -- env HOME=/home/sandbox MPLBACKEND=Agg \
    python3 -c "import matplotlib.pyplot as plt; plt.figure(); import IPython.paths; IPython.paths.get_ipython_dir()"
runuser -u sandbox -- env HOME=/home/sandbox ipython profile create >/dev/null 2>&1 || true

apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/cache/debconf/*-old

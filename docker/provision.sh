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
    socat iptables ipset tini procps ca-certificates
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

# `pip install` as the sandbox user goes to ~/.local without the PEP 668 refusal.
cat > /etc/pip.conf <<'PIP'
[global]
break-system-packages = true
user = true
disable-pip-version-check = true
no-warn-script-location = true
PIP

# Bound each output message: ipykernel otherwise batches everything printed between flushes
# into one message (100 MB of prints arrive as one 100 MB frame). Flushing at 64 KiB keeps
# messages small, so the server's memory stays bounded by its output cap.
cat > /usr/lib/python3/dist-packages/kernelbox_output.py <<'PY'
"""kernelbox: flush kernel output every 64 KiB so no output message grows unbounded."""
from ipykernel.iostream import OutStream

FLUSH_AT = 64 * 1024
_write = OutStream.write


def _bounded_write(self, string):
    written = _write(self, string)
    if self._buffer.tell() >= FLUSH_AT and self._is_master_process():
        self.flush()
    return written


OutStream.write = _bounded_write
PY
mkdir -p /etc/ipython
cat > /etc/ipython/ipython_kernel_config.py <<'PY'
# kernelbox: load the output bound into every kernel, leaving the user namespace clean.
c.IPKernelApp.exec_lines = ["import kernelbox_output as _kernelbox_output; del _kernelbox_output"]
PY

# Build matplotlib's font cache and IPython's profile as the sandbox user, so the first plot
# and the first kernel start do not pay for them.
runuser -u sandbox -- env HOME=/home/sandbox MPLBACKEND=Agg \
    python3 -c "import matplotlib.pyplot as plt; plt.figure(); import IPython.paths; IPython.paths.get_ipython_dir()"
runuser -u sandbox -- env HOME=/home/sandbox ipython profile create >/dev/null 2>&1 || true

apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/cache/debconf/*-old

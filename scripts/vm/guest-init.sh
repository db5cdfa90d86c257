#!/bin/bash
# PID 1 of the User-Mode Linux guest that run-in-uml.sh boots (see docs/decisions/0008).
# The guest's root is the host's / through hostfs, read-only; this script overlays a tmpfs on
# it, loads the device-mapper modules, writes an LVM configuration that needs no udev, runs
# the command run-in-uml.sh left in the shared folder, writes its exit status there and powers
# the guest off.

if [ "$$" -ne 1 ]; then
  echo "guest-init.sh is the init of a UML guest started by run-in-uml.sh, not a command" >&2
  exit 2
fi
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

poweroff() {
  sync
  echo o >/proc/sysrq-trigger
  sleep 10
}
fail() {
  echo "guest-init: $*" >/dev/console
  [ -n "${out:-}" ] && [ -d "$out" ] && echo "guest-init: $*" >>"$out/output.log"
  poweroff
  # Without /proc there is no sysrq: init exiting panics the kernel, which ends UML too.
  exit 1
}

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
mount -t tmpfs -o mode=755 run /run || fail "cannot mount /run"
# Loopback, for what a test serves to itself (a registry); the guest has no other network.
ip link set lo up 2>/dev/null || true

shared=$(sed -n 's/.*\bshoal_out=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$shared" ] || fail "no shoal_out= on the kernel command line"

# The UML kernel's modules are the host's files, in a folder of their own; the host has no
# /lib/modules to mount over (its root is read-only here), so overlayfs (no dependencies) is
# loaded by path and the rest once the overlay can hold a /lib/modules.
kver=$(uname -r)
modules=/usr/lib/uml/modules/$kver
insmod "$modules/kernel/fs/overlayfs/overlay.ko" || fail "cannot load overlayfs"

# A writable view of the host's root: the upper layer lives in guest memory.
mkdir -p /run/rootfs
mount -t tmpfs -o mode=755 rootfs /run/rootfs || fail "cannot mount the overlay tmpfs"
mkdir -p /run/rootfs/upper /run/rootfs/work /run/rootfs/root
root=/run/rootfs/root
mount -t overlay overlay -o lowerdir=/,upperdir=/run/rootfs/upper,workdir=/run/rootfs/work "$root" ||
  fail "cannot mount the root overlay"
mkdir -p "$root/lib/modules"
mount -t tmpfs -o mode=755 modules "$root/lib/modules" || fail "cannot mount /lib/modules"
ln -s "$modules" "$root/lib/modules/$kver"
for d in proc sys dev; do
  mount --rbind "/$d" "$root/$d" || fail "cannot bind /$d"
done
mount -t tmpfs -o mode=755 run "$root/run" || fail "cannot mount the guest's /run"
# /tmp stays the overlay's: a checkout under the host's /tmp must stay visible (writes go to
# the tmpfs upper layer like everywhere else).
chroot "$root" modprobe dm-thin-pool || fail "modprobe dm-thin-pool failed"
mkdir -p "$root/mnt/shoal-out"
# sync: what the command writes reaches the host at once, even if the guest is killed.
mount -t hostfs -o "sync,$shared" hostfs "$root/mnt/shoal-out" || fail "cannot mount the shared folder $shared"
out="$root/mnt/shoal-out"

# No udevd runs here: libdevmapper makes the /dev nodes and links itself.
cat >"$root/etc/lvm/lvmlocal.conf" <<'CONF'
activation {
  udev_sync = 0
  udev_rules = 0
  monitoring = 0
}
devices {
  obtain_device_list_from_udev = 0
}
CONF

chroot "$root" /usr/bin/env SHOAL_LVM_GUEST=1 SHOAL_LVM_DEVICE=/dev/ubda \
  /bin/bash /mnt/shoal-out/command.sh >>"$out/output.log" 2>&1
echo "$?" >"$out/status"
poweroff

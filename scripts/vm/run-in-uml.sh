#!/usr/bin/env bash
# Runs a command inside a User-Mode Linux guest that has device-mapper (the host's kernel has
# none), so LVM thin provisioning can be tested for real. See docs/decisions/0008.
#
#   scripts/vm/run-in-uml.sh [--timeout SECONDS] [--disk SIZE] [--mem SIZE] -- COMMAND [ARG...]
#
# The guest borrows the host's root file system read-only (hostfs, a tmpfs overlay on top), so
# it has the project checkout, node and the LVM tools without any image being built. Its only
# disks, /dev/ubda and /dev/ubdb, are fresh sparse files. COMMAND runs as root in the project directory with
# SHOAL_LVM_GUEST=1 set; its output and exit status come back through a shared folder, and this
# script exits with that status (124 when the guest ran out of time, 125 when it never ran the
# command). Needs the `user-mode-linux` package (and lvm2, thin-provisioning-tools, e2fsprogs,
# kmod for what runs inside).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
timeout=300
disk_size=4G
mem=1024M
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout=$2; shift 2 ;;
    --disk) disk_size=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "run-in-uml: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: $0 [--timeout SECONDS] [--disk SIZE] [--mem SIZE] -- COMMAND [ARG...]" >&2
  exit 2
fi
if ! command -v linux.uml >/dev/null; then
  echo "run-in-uml: linux.uml not found (apt-get install user-mode-linux)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-uml.XXXXXX")
out=$work/out
mkdir "$out"
chmod 755 "$work" "$out"
# The guest's scratch disks, /dev/ubda and /dev/ubdb (a second volume group: a second node):
# sparse, so only what LVM writes takes space.
truncate -s "$disk_size" "$work/disk.img" "$work/disk2.img"
{
  printf 'export PATH=%q HOME=/root LANG=C.UTF-8\n' "$PATH"
  [ -n "${NODE_OPTIONS:-}" ] && printf 'export NODE_OPTIONS=%q\n' "$NODE_OPTIONS"
  # Where the host built the test images (test/harness/images.ts), for the guest to read them.
  [ -n "${SHOAL_TEST_IMAGES:-}" ] && printf 'export SHOAL_TEST_IMAGES=%q\n' "$SHOAL_TEST_IMAGES"
  printf 'cd %q || exit 125\n' "$project"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$out/command.sh"
: >"$out/output.log"

guest=''
cleanup() {
  # The guest and its helper processes share the process group setsid gave it.
  if [ -n "$guest" ] && kill -0 "$guest" 2>/dev/null; then
    kill -KILL -- "-$guest" 2>/dev/null || true
    wait "$guest" 2>/dev/null || true
  fi
  [ -n "${tail_pid:-}" ] && kill "$tail_pid" 2>/dev/null || true
  if [ "${SHOAL_VM_KEEP:-}" = 1 ]; then echo "run-in-uml: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
# The guest's memory is a file under TMPDIR, which must allow executable mappings.
TMPDIR=/dev/shm setsid linux.uml \
  mem="$mem" root=/dev/root rootfstype=hostfs rootflags=/ ro \
  ubd0="$work/disk.img" ubd1="$work/disk2.img" con=null con0=null,fd:1 quiet loglevel=3 panic=-1 \
  init="$here/guest-init.sh" shoal_out="$out" \
  </dev/null >"$work/console.log" 2>&1 &
guest=$!
tail -n +1 -f --pid="$guest" "$out/output.log" &
tail_pid=$!

status=''
while kill -0 "$guest" 2>/dev/null; do
  if [ $((SECONDS - started)) -ge "$timeout" ]; then
    echo "run-in-uml: the guest ran out of time (${timeout}s): killing it" >&2
    kill -KILL -- "-$guest" 2>/dev/null || true
    status=124
    break
  fi
  sleep 0.2
done
wait "$guest" 2>/dev/null || true
wait "$tail_pid" 2>/dev/null || true
tail_pid=''

if [ -z "$status" ]; then
  if [ -s "$out/status" ]; then
    status=$(cat "$out/status")
  else
    echo "run-in-uml: the guest stopped without running the command; its console said:" >&2
    tail -n 40 "$work/console.log" >&2
    status=125
  fi
fi
echo "run-in-uml: guest exited with status $status after $((SECONDS - started))s" >&2
exit "$status"

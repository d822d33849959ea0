#!/usr/bin/env bash
# pin.sh: write packages.lock from the versions apt offers today.
# Run it (after apt-get update) when Debian replaced a pinned version.
set -euo pipefail
cd "$(dirname "$0")"
kver=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
[ -n "$kver" ] || { echo "pin.sh: cannot resolve the kernel ABI (apt-get update first)" >&2; exit 1; }
pkgs="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils qemu-system-xen
      libxenhypfs1 libxenmisc4.17 libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
      libxenstore4 libxentoolcore1 libxentoollog1 libxendevicemodel1 libyajl2 libspice-server1
      libfdt1 libusb-1.0-0 usbip libudev1 linux-image-$kver linux-headers-$kver linux-headers-${kver%-amd64}-common
      linux-kbuild-6.1 linux-source-6.1"
{
	echo "# Debian packages of the Xen lab, pinned: name version (testdata/lab/pin.sh rewrites this)."
	echo "# kernel-abi $kver"
	for p in $pkgs; do
		v=$(apt-cache policy "$p" | awk '/Candidate:/{print $2}')
		[ -n "$v" ] && [ "$v" != "(none)" ] || { echo "pin.sh: no candidate for $p" >&2; exit 1; }
		echo "$p $v"
	done
} > packages.lock.new
mv packages.lock.new packages.lock
echo "pin.sh: wrote $(grep -vc '^#' packages.lock) pins (kernel $kver)" >&2

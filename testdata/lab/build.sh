#!/usr/bin/env bash
# Build the Xen lab: real Xen 4.17 with Debian's Linux 6.1 as dom0 and domU,
# under QEMU TCG. Everything big goes to $PVUSB_LAB (default /tmp/pvusb-lab):
#
#   cache/debs/          the pinned Debian packages (apt-get download; nothing
#                        is installed on the host), named by version: the cache key
#   cache/x-<hash>/      the packages unpacked (dpkg -x), keyed on the deb set
#   cache/hcd-<kver>/    xen-hcd.ko built out of tree (Debian leaves USB_XEN_HCD out)
#   img/                 xen, vmlinuz, dom0.cpio.gz, domU.cpio.gz
#
# The dom0 image carries a static pvusb, the lab-only Go tests (`go test -c
# -tags lab`) and the scenario scripts. Host needs: qemu-system-x86,
# busybox-static, cpio, gcc, make, Go (./build.sh deps installs them).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
LAB=${PVUSB_LAB:-/tmp/pvusb-lab}
C=$LAB/cache
IMG=$LAB/img
mkdir -p "$C/debs" "$IMG"
t0=$(date +%s)
step() { echo "[lab build +$(($(date +%s) - t0))s] $*" >&2; }
die() { echo "LAB RESULT build FAIL reason=\"$*\"" >&2; exit 2; }

# ---- packages: pinned in packages.lock; a pin Debian no longer serves is
# replaced by today's candidate, loudly (the run reports pins=drifted).
LOCK=$HERE/packages.lock
KVER=$(awk '/^# kernel-abi /{print $3}' "$LOCK")
drift=""
fetch() { # name version
	local n=$1 v=$2 mark="$C/debs/.ok-$1-${2//[:+~]/_}"
	[ -e "$mark" ] && return 0
	if (cd "$C/debs" && apt-get download "$n=$v" >/dev/null 2>&1); then
		touch "$mark"
		return 0
	fi
	return 1
}
step "download pinned packages (cache: $C/debs)"
while read -r name ver; do
	case $name in '' | '#'*) continue ;; esac
	fetch "$name" "$ver" && continue
	cand=$(apt-cache policy "$name" 2>/dev/null | awk '/Candidate:/{print $2}')
	if [ -n "$cand" ] && [ "$cand" != "(none)" ] && fetch "$name" "$cand"; then
		echo "LAB WARNING pin $name=$ver no longer served; using $cand (refresh with testdata/lab/pin.sh)" >&2
		drift="$drift $name"
		continue
	fi
	die "cannot download $name ($ver, candidate ${cand:-none}): apt-get update, or a new kernel ABI (testdata/lab/pin.sh)"
done <"$LOCK"
if [ -n "$drift" ]; then echo drifted; else echo exact; fi >"$IMG/pins"
ls "$C"/debs/linux-image-"$KVER"_*.deb >/dev/null 2>&1 || die "kernel $KVER not in the cache: run testdata/lab/pin.sh"

# ---- unpack (runtime packages only), keyed on the set of debs
key=$(ls "$C"/debs/*.deb | sort | md5sum | cut -c1-12)
X=$C/x-$key
if [ ! -e "$X/.done" ]; then
	step "unpack packages"
	rm -rf "$C"/x-*
	mkdir -p "$X"
	for d in "$C"/debs/*.deb; do
		case $d in *linux-source* | *linux-headers* | *linux-kbuild*) continue ;; esac
		dpkg -x "$d" "$X"
	done
	/bin/busybox depmod -b "$X" "$KVER" # the deb ships no modules.dep
	touch "$X/.done"
fi
zcat "$X/boot/xen-4.17-amd64.gz" >"$IMG/xen"
cp "$X/boot/vmlinuz-$KVER" "$IMG/vmlinuz"

# ---- xen-hcd.ko out of tree, from the same kernel's source
H=$C/hcd-$KVER
if [ ! -e "$H/xen-hcd.ko" ]; then
	step "build xen-hcd.ko out of tree"
	KH=$C/kh
	rm -rf "$KH" "$C/src" "$H"
	mkdir -p "$KH" "$C/src" "$H"
	for d in "$C"/debs/linux-headers-*.deb "$C"/debs/linux-kbuild-6.1_*.deb; do dpkg -x "$d" "$KH"; done
	sed -i "s#^include /usr/src/#include $KH/usr/src/#" "$KH/usr/src/linux-headers-$KVER/Makefile"
	dpkg -x "$C"/debs/linux-source-6.1_*.deb "$C/src"
	tar -C "$C/src" -xaf "$C"/src/usr/src/linux-source-6.1.tar.xz linux-source-6.1/drivers/usb/host/xen-hcd.c
	cp "$C/src/linux-source-6.1/drivers/usb/host/xen-hcd.c" "$H/"
	printf 'obj-m := xen-hcd.o\n' >"$H/Kbuild"
	make -s -C "$KH/usr/src/linux-headers-$KVER" M="$H" modules || die "xen-hcd.ko did not build"
	rm -rf "$C/src" "$KH" # 200 MB we no longer need
fi

# ---- pvusb and the lab-only Go tests, static
step "build pvusb and the lab tests (static)"
B=$LAB/bin
mkdir -p "$B"
(cd "$TOP" && ./build.sh >/dev/null 2>&1 && cp pvusb "$B/pvusb") || die "pvusb did not build"
for p in xs core/grant core/evtchn core/usbip; do
	(cd "$TOP" && CGO_ENABLED=0 go test -c -tags lab -o "$B/$(basename $p).test" "./$p") || die "lab test $p did not build"
done

# ---- helpers for the images
LDPATH="$X/usr/lib/x86_64-linux-gnu:$X/lib/x86_64-linux-gnu"
copy_libs() { # root file...: the shared libraries ldd finds
	local root=$1
	shift
	for f in "$@"; do
		{ LD_LIBRARY_PATH=$LDPATH ldd "$f" 2>/dev/null || true; } | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' |
			while read -r lib; do
				[ -e "$root/lib/x86_64-linux-gnu/$(basename "$lib")" ] || cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
			done
	done
}
mkroot() {
	local r=$1
	rm -rf "$r"
	mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,mnt,var/log,var/lib,lib/x86_64-linux-gnu,lib64,usr/bin,usr/sbin}
	cp /bin/busybox "$r/bin/busybox"
	for a in $(/bin/busybox --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
}
add_modules() { # root module...: with their dependencies from modules.dep
	local r=$1
	shift
	local md=$X/lib/modules/$KVER todo="$*" seen=""
	mkdir -p "$r/lib/modules/$KVER"
	cp "$md"/modules.{order,builtin,builtin.modinfo} "$r/lib/modules/$KVER/" 2>/dev/null || true
	while [ -n "$todo" ]; do
		set -- $todo
		local m=$1
		shift
		todo="$*"
		case " $seen " in *" $m "*) continue ;; esac
		seen="$seen $m"
		local line
		line=$(grep -E "(^|/)(${m}|${m//-/_}|${m//_/-})\.ko:" "$md/modules.dep" || true)
		[ -n "$line" ] || die "module $m not found"
		local path=${line%%:*}
		mkdir -p "$r/lib/modules/$KVER/$(dirname "$path")"
		cp "$md/$path" "$r/lib/modules/$KVER/$path"
		for dep in ${line#*:}; do todo="$todo $(basename "$dep" .ko)"; done
	done
}
pack() { (cd "$1" && find . | cpio -o -H newc --quiet | gzip -1) >"$2"; }

# ---- domU: busybox, the USB storage stack, xen-hcd
step "domU image"
U=$LAB/domUroot
mkroot "$U"
add_modules "$U" usbcore usb-storage sd_mod xen-evtchn xen-gntalloc vhci-hcd
mkdir -p "$U/lib/modules/$KVER/extra"
cp "$H/xen-hcd.ko" "$U/lib/modules/$KVER/extra/"
/bin/busybox depmod -b "$U" "$KVER"
install -m 0755 "$HERE/domU-init" "$U/init"
cp "$B/pvusb" "$U/bin/pvusb" # usbfront in the guest (labmode=usbfront)
# Linux's own USB/IP client, to attach what usbfront --export offers
cp "$X/usr/sbin/usbip" "$U/usr/sbin/usbip"
cp -L /lib64/ld-linux-x86-64.so.2 "$U/lib64/"
copy_libs "$U" "$U/usr/sbin/usbip"
pack "$U" "$IMG/domU.cpio.gz"

# ---- dom0: Xen userspace, QEMU's device model (qusb), pvusb, the scenarios
step "dom0 image"
D=$LAB/dom0root
mkroot "$D"
add_modules "$D" xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd usbcore ehci-pci xhci-pci usb-storage sd_mod
/bin/busybox depmod -b "$D" "$KVER"
mkdir -p "$D/usr/lib/xen-4.17" "$D/usr/libexec" "$D/etc/xen" "$D/var/lib/xen" "$D/var/lib/xenstored" "$D/var/log/xen" "$D/usr/share/qemu"
cp -a "$X/usr/lib/xen-4.17/bin" "$D/usr/lib/xen-4.17/"
rm -f "$D/usr/lib/xen-4.17/bin/"{pygrub,xenpvnetboot}
cp -a "$X/etc/xen/." "$D/etc/xen/"
cp "$X/usr/libexec/xen-qemu-system-i386" "$D/usr/libexec/"
cp "$X"/usr/bin/xenstore* "$D/usr/bin/"
rmdir "$D/var/run" 2>/dev/null || true
ln -sfn /run "$D/var/run" # libxl uses /var/run/xen
cp -a /usr/share/qemu/keymaps "$D/usr/share/qemu/" 2>/dev/null || true
cp /bin/bash "$D/bin/bash.real"
ln -sf bash.real "$D/bin/bash"
copy_libs "$D" "$D"/usr/lib/xen-4.17/bin/* "$D"/usr/bin/xenstore "$D/usr/libexec/xen-qemu-system-i386" /bin/bash
cp -L /lib64/ld-linux-x86-64.so.2 "$D/lib64/"
cp -L /lib/x86_64-linux-gnu/libnss_files.so.2 "$D/lib/x86_64-linux-gnu/" 2>/dev/null || true
echo "root:x:0:0:root:/root:/bin/sh" >"$D/etc/passwd"
echo "root:x:0:" >"$D/etc/group"
printf 'hosts: files\npasswd: files\n' >"$D/etc/nsswitch.conf"
echo "127.0.0.1 localhost" >"$D/etc/hosts"
install -m 0755 "$HERE/dom0-init" "$D/init"
mkdir -p "$D/lab/bin"
cp "$HERE"/domU-*.cfg "$D/root/"
install -m 0755 "$HERE/test.sh" "$D/lab/test.sh"
install -m 0755 "$HERE/vhci-capture.sh" "$D/lab/vhci-capture.sh"
cp -a "$HERE/scenarios" "$D/lab/"
cp "$B"/* "$D/lab/bin/"
ln -s /lab/bin/pvusb "$D/usr/sbin/pvusb"
cp "$IMG/vmlinuz" "$D/root/vmlinuz"
cp "$IMG/domU.cpio.gz" "$D/root/domU.cpio.gz"
cp "$IMG/pins" "$D/lab/pins"
pack "$D" "$IMG/dom0.cpio.gz"
step "done: $(du -sh "$IMG" | cut -f1) in $IMG"

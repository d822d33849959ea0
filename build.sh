#!/usr/bin/env bash
# build.sh — build, install and test pvusb.
#
#   ./build.sh                 build ./pvusb: one statically linked binary with libusb inside
#   ./build.sh pure            build ./pvusb without libusb (pure Go, CGO_ENABLED=0)
#   ./build.sh install DIR     build, then install DIR/pvusb and one symlink per applet
#   ./build.sh deps            install what the tests need (Debian: gcc, libxen-dev, …); needs root
#   ./build.sh test            deps, then the whole test suite (the README's test command)
#   ./build.sh fuzz [TIME]     run every fuzz target for TIME each (default 60s; 100000x = a count)
#   ./build.sh lab [SCENARIO…] the Xen lab: real Xen + Linux under QEMU (testdata/lab/run.sh)
#
# The default build links gousb (cgo) against libusb 1.0.26 built here from
# Debian's source package without udev, statically (go-stack.md §2, option
# 2): a private deb-src list and apt state under .build/, never the
# system's apt configuration. libusb is LGPL-2.1: .build/libusb keeps the
# objects for relinking. gousb only enumerates; I/O is pure Go (stub/usbfs).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"

version() { git describe --tags --always --dirty 2>/dev/null || echo dev; }
commit() { git rev-parse --short=12 HEAD 2>/dev/null || echo unknown; }

LIBUSB_VERSION=2:1.0.26-1
LIBUSB=$PWD/.build/libusb-1.0.26

# libusb: fetch the pinned Debian source (apt checks it against the signed
# Sources index) and build it static, without udev; once.
libusb() {
	[ -e "$LIBUSB/lib/libusb-1.0.a" ] && return 0
	local b=$PWD/.build apt=$PWD/.build/apt
	mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$b/src"
	echo "deb-src http://deb.debian.org/debian bookworm main" >"$apt/sources.list"
	local opts=(-q -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
	echo "build.sh: fetching libusb $LIBUSB_VERSION from Debian's sources" >&2
	apt-get "${opts[@]}" update >"$b/apt.log" 2>&1 || { cat "$b/apt.log" >&2; return 1; }
	(cd "$b/src" && apt-get "${opts[@]}" source --download-only "libusb-1.0=$LIBUSB_VERSION") >>"$b/apt.log" 2>&1 ||
		{ cat "$b/apt.log" >&2; return 1; }
	rm -rf "$b/src/libusb-1.0.26"
	tar -C "$b/src" -xjf "$b/src/libusb-1.0_1.0.26.orig.tar.bz2"
	echo "build.sh: building libusb static, without udev" >&2
	(cd "$b/src/libusb-1.0.26" && ./configure -q --disable-udev --enable-static --disable-shared --prefix="$LIBUSB" &&
		make -s -j"$(nproc)" && make -s install) >"$b/libusb-build.log" 2>&1 ||
		{ tail -30 "$b/libusb-build.log" >&2; return 1; }
}

build() {
	libusb || { echo "build.sh: libusb did not build (./build.sh pure builds without it)" >&2; exit 1; }
	PKG_CONFIG_PATH=$LIBUSB/lib/pkgconfig CGO_ENABLED=1 go build -trimpath -tags libusb,netgo,osusergo \
		-ldflags "-s -w -linkmode external -extldflags -static -X main.version=$(version) -X main.commit=$(commit)" \
		-o pvusb .
	echo "built ./pvusb ($(version), commit $(commit), libusb inside)" >&2
}

build_pure() {
	CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X main.version=$(version) -X main.commit=$(commit)" \
		-o pvusb .
	echo "built ./pvusb ($(version), commit $(commit), pure Go, no libusb)" >&2
}

applets() { ./pvusb --generate-bash-completion | grep -v '^help$'; }

deps() {
	local pkgs=(gcc pkg-config make bzip2 libxen-dev libusb-1.0-0-dev xenstore-utils usbip file git
		qemu-system-x86 busybox-static cpio bc make) missing=()
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	if ((${#missing[@]})); then
		if [ "$(id -u)" != 0 ]; then
			echo "build.sh: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
			exit 1
		fi
		echo "build.sh: installing ${missing[*]}" >&2
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	go mod download
}

fuzz() {
	local t=${1:-60s}
	# package:target pairs; each runs alone because -fuzz takes one target.
	local targets=(
		./core/usbif:FuzzDecodeValidate
		./ring:FuzzBackRingHostilePage
		./core/ringview:FuzzAnalyze
		./xs:FuzzReadMsg
		./xs:FuzzServerConnection
		./stub/msc:FuzzCDB
		./core/usbdesc:FuzzParseAll
		./core/backend:FuzzDispatch
	)
	for pt in "${targets[@]}"; do
		echo "== fuzz ${pt#*:} for $t" >&2
		go test "${pt%%:*}" -run '^$' -fuzz "^${pt#*:}\$" -fuzztime "$t"
	done
}

case "${1:-build}" in
build) build ;;
pure) build_pure ;;
libusb) libusb ;;
install)
	dir=${2:?usage: ./build.sh install DIR}
	build
	mkdir -p "$dir"
	install -m 0755 pvusb "$dir/pvusb"
	for a in $(applets); do ln -sfn pvusb "$dir/$a"; done
	echo "installed $dir/pvusb and $(applets | wc -l) applet link(s): $(applets | tr '\n' ' ')" >&2
	;;
deps) deps ;;
test)
	deps
	go test -count=1 ./...
	# The libusb side (gousb, cgo) is compiled and tested with the static
	# libusb the binary links.
	libusb
	PKG_CONFIG_PATH=$LIBUSB/lib/pkgconfig CGO_ENABLED=1 go test -count=1 -tags libusb ./stub/libusb/ ./applets/vportctl/
	;;
fuzz) fuzz "${2:-60s}" ;;
lab)
	shift
	exec testdata/lab/run.sh "$@"
	;;
*)
	sed -n '2,14p' "$0" >&2
	exit 2
	;;
esac

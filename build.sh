#!/usr/bin/env bash
# build.sh — build, install and test pvusb.
#
#   ./build.sh                 build ./pvusb: one statically linked binary (CGO_ENABLED=0)
#   ./build.sh install DIR     build, then install DIR/pvusb and one symlink per applet
#   ./build.sh deps            install what the tests need (Debian: gcc, libxen-dev, …); needs root
#   ./build.sh test            deps, then the whole test suite (the README's test command)
#   ./build.sh fuzz [TIME]     run every fuzz target for TIME each (default 60s; 100000x = a count)
#   ./build.sh lab [SCENARIO…] the Xen lab: real Xen + Linux under QEMU (testdata/lab/run.sh)
#
# The default build is pure Go, so it is static for free. gousb (cgo +
# libusb) joins behind the `libusb` build tag in the usbback work; that
# build links a libusb compiled without udev (go-stack.md §2, option 2).
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$PATH:/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin"

version() { git describe --tags --always --dirty 2>/dev/null || echo dev; }
commit() { git rev-parse --short=12 HEAD 2>/dev/null || echo unknown; }

build() {
	CGO_ENABLED=0 go build -trimpath \
		-ldflags "-s -w -X main.version=$(version) -X main.commit=$(commit)" \
		-o pvusb .
	echo "built ./pvusb ($(version), commit $(commit))" >&2
}

applets() { ./pvusb --generate-bash-completion | grep -v '^help$'; }

deps() {
	local pkgs=(gcc pkg-config libxen-dev libusb-1.0-0-dev xenstore-utils file git
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
	)
	for pt in "${targets[@]}"; do
		echo "== fuzz ${pt#*:} for $t" >&2
		go test "${pt%%:*}" -run '^$' -fuzz "^${pt#*:}\$" -fuzztime "$t"
	done
}

case "${1:-build}" in
build) build ;;
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
	;;
fuzz) fuzz "${2:-60s}" ;;
lab)
	shift
	exec testdata/lab/run.sh "$@"
	;;
*)
	sed -n '2,13p' "$0" >&2
	exit 2
	;;
esac

#!/bin/sh
# vhci-capture.sh LOG OUTDIR: pull the USB/IP captures that the lab domU
# printed on its console (pvusb usbfront --capture, between "DOMU CAPTURE
# BEGIN NAME" and "DOMU CAPTURE END", gzip then base64) out of LOG into
# OUTDIR/NAME. dom0 uses it to check them live; on the host it refreshes
# core/usbip/testdata/vhci from a lab run's guest-pvf.log.
set -e
[ $# -eq 2 ] || { echo "usage: $0 LOG OUTDIR" >&2; exit 2; }
mkdir -p "$2"
tr -d '\r' <"$1" | awk -v dir="$2" '
	/^DOMU CAPTURE BEGIN / { f = dir "/" $4 ".b64"; printf "" > f; next }
	/^DOMU CAPTURE END/ { close(f); f = ""; next }
	f != "" { print >> f }'
for b in "$2"/*.b64; do
	[ -e "$b" ] || continue
	base64 -d <"$b" | gunzip >"${b%.b64}"
	rm "$b"
done

#!/usr/bin/env bash
# run.sh [scenario...]: build the lab if needed, boot Xen + dom0 under QEMU
# TCG, let dom0 run the scenarios (all when none is named), and print one
# "LAB RESULT <scenario> PASS|FAIL key=value..." line each.
#
# Exit status: 0 when every requested scenario passed; 1 on any FAIL, a
# missing result or the timeout; 2 when the lab could not be built or
# booted. The serial log, dom0's scenario logs and the guest consoles stay
# in the run folder it names ($PVUSB_LAB/runs/<time>).
#
# Knobs: PVUSB_LAB (/tmp/pvusb-lab), LAB_TIMEOUT (1000 s), LAB_MEM (1024 MiB).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LAB=${PVUSB_LAB:-/tmp/pvusb-lab}
TIMEOUT=${LAB_TIMEOUT:-1000}
all="xenstore-client grant-evtchn qusb-reference ringdump-live pvusb-backend pvusb-host pvusb-frontend"
scen=${*:-$all}
RUN=$LAB/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
ln -sfn "$RUN" "$LAB/runs/last"
say() { echo "lab: $*" >&2; }
failall() { # reason: one FAIL line per scenario, exit 2
	for s in $scen; do echo "LAB RESULT $s FAIL reason=$1"; done
	say "logs in $RUN"
	exit 2
}

for tool in qemu-system-x86_64 cpio /bin/busybox gcc make go apt-get; do
	command -v "$tool" >/dev/null || failall "host-tool-missing-$(basename $tool)"
done
t0=$(date +%s.%N)
if ! "$HERE/build.sh" >"$RUN/build.log" 2>&1; then
	cat "$RUN/build.log" >&2
	failall build-failed
fi
grep -a 'LAB WARNING' "$RUN/build.log" >&2
tb=$(date +%s.%N)

IMG=$LAB/img
truncate -s 64M "$RUN/usbstick.img"
cmdline="console=hvc0 earlyprintk=xen lab.scenarios=$(echo $scen | tr ' ' :)"
say "booting Xen 4.17 + Linux 6.1 under QEMU TCG: $scen"
qemu-system-x86_64 -accel tcg -cpu qemu64 -m "${LAB_MEM:-1024}" -smp 2 \
	-display none -monitor none -no-reboot -serial file:"$RUN/serial.log" \
	-kernel "$IMG/xen" \
	-append "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2 loglvl=all guest_loglvl=all" \
	-initrd "$IMG/vmlinuz $cmdline,$IMG/dom0.cpio.gz" \
	-device qemu-xhci,id=xhci -device usb-ehci,id=ehci \
	-drive if=none,id=stick,format=raw,file="$RUN/usbstick.img" \
	-device usb-storage,bus=ehci.0,drive=stick,serial=LABSTICK01 \
	>"$RUN/qemu.log" 2>&1 &
qpid=$!
peak=0
timedout=""
while kill -0 "$qpid" 2>/dev/null; do
	r=$(awk '/VmRSS/{print $2}' /proc/$qpid/status 2>/dev/null)
	[ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
	if awk -v a="$tb" -v b="$(date +%s.%N)" -v t="$TIMEOUT" 'BEGIN{exit !(b-a >= t)}'; then
		timedout=1
		kill "$qpid"
		break
	fi
	sleep 0.5
done
wait "$qpid" 2>/dev/null
te=$(date +%s.%N)
tr -d '\r' <"$RUN/serial.log" >"$RUN/serial.txt"
# Split the logs dom0 dumped at the end into files of their own.
awk -v dir="$RUN" '/^LAB LOG BEGIN /{f=dir "/" $4; next} /^LAB LOG END /{f=""; next} f{print > f}' "$RUN/serial.txt"

grep -a '^LAB RESULT' "$RUN/serial.txt" | sort -u >"$RUN/results.txt"
for s in $scen; do
	grep -q "^LAB RESULT $s " "$RUN/results.txt" ||
		echo "LAB RESULT $s FAIL reason=${timedout:+timeout-${TIMEOUT}s}${timedout:-no-result}" >>"$RUN/results.txt"
done
cat "$RUN/results.txt"
printf 'lab: build %.1fs, boot-to-poweroff %.1fs, total %.1fs, qemu peak RSS %d MiB%s\n' \
	"$(echo "$tb - $t0" | bc)" "$(echo "$te - $tb" | bc)" "$(echo "$te - $t0" | bc)" $((peak / 1024)) "${timedout:+, TIMEOUT}" >&2
say "logs in $RUN (serial.txt, lab-*.log, guest-*.log)"
if grep -v ' PASS' "$RUN/results.txt" | grep -q .; then
	exit 1
fi
exit 0

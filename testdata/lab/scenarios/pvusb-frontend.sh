#!/bin/sh
# pvusb-frontend: our frontend in a guest against real backends. A PV
# domU runs pvusb usbfront (using /dev/xen/gntalloc, /dev/xen/evtchn and
# /dev/xen/xenbus) instead of xen-hcd; each device reaches the domU's
# own usb-storage through vhci-hcd (USB/IP over a socketpair).
#   part 1: QEMU's qusb backend, the EHCI stick attached with xl
#           usbdev-attach: 16 MiB O_DIRECT write/read/compare in the domU
#   part 2: a second controller (type pv) attached with xl
#           usbctrl-attach, served by pvusb usbback (adopt = true) with an
#           emulated disk: the same test on it
#   part 3: that usbfront closed (SIGINT) and started again with --export:
#           Linux's usbip list -r / usbip attach over loopback TCP, the
#           disk read back and compared
# Throughput as ratios to qusb-reference (xen-hcd + qusb) in this boot.
LOG=/var/log/xen/console/guest-pvf.log
UBLOG=/tmp/lab-usbback-front.log
. "$(dirname "$0")/lib.sh"
fail() {
	echo "LAB RESULT pvusb-frontend FAIL reason=$1 $facts"
	tail -40 $LOG 2>/dev/null | sed 's/^/  domU: /'
	tail -20 $UBLOG 2>/dev/null | sed 's/^/  usbback: /'
	kill $UB 2>/dev/null
	xl destroy pvf 2>/dev/null
	exit 1
}
BUSID=""
for d in /sys/bus/usb/devices/*; do [ "$(cat $d/serial 2>/dev/null)" = LABSTICK01 ] && BUSID=$(basename $d); done
[ -n "$BUSID" ] || fail no-usb-stick-in-dom0
BUS=$(cat /sys/bus/usb/devices/$BUSID/busnum)
DEV=$(cat /sys/bus/usb/devices/$BUSID/devnum)
xl create /root/domU-pvfront.cfg >/tmp/xl-create-pvf.log 2>&1 || { cat /tmp/xl-create-pvf.log; fail xl-create; }
D=$(xl domid pvf)
waitfor "DOMU READY" 120 || fail domU-not-ready
grep -aq "DOMU READY xen-hcd=0 mode=usbfront" $LOG || fail "domU-not-in-usbfront-mode"
xl usbdev-attach pvf hostbus=$BUS hostaddr=$DEV || fail usbdev-attach
waitfor "DOMU DEVICE sda" 120 || fail domU-saw-no-disk-through-vhci
note qusb_device=vhci
waitfor "DOMU RESULT " 300 || fail no-result-from-domU
r=$(grep -a "DOMU RESULT " $LOG | head -1)
r=${r#*DOMU RESULT }
case $r in storage=PASS*) ;; *) fail "qusb-part $r" ;; esac
m=$(mbps "$r")
note "qusb_part=PASS qusb_write_MBps=${m% *} qusb_read_MBps=${m#* } $(ratio "$m" qusb)"

# Part 2: our backend, a controller attached while the domU runs.
truncate -s 32M /tmp/pvf.img
printf 'control = "/run/pvusb/front.sock"\nadopt = true\n' >/tmp/front.toml
pvusb usbback -c /tmp/front.toml >$UBLOG 2>&1 &
UB=$!
i=0
while [ ! -S /run/pvusb/front.sock ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
xl usbctrl-attach pvf type=pv version=2 ports=4 >/tmp/xl-ctrl.log 2>&1 || { cat /tmp/xl-ctrl.log; fail usbctrl-attach; }
pvusb vportctl -s /run/pvusb/front.sock add "emu-msc:/tmp/pvf.img:$D:1:1" || fail vportctl-add
waitfor "DOMU DEVICE2" 120 || fail domU-saw-no-second-disk
waitfor "DOMU RESULT2" 300 || fail no-result2-from-domU
r=$(grep -a "DOMU RESULT2" $LOG | head -1)
r=${r#*DOMU RESULT2 }
case $r in storage=PASS*) ;; *) fail "usbback-part $r" ;; esac
m=$(mbps "$r")
note "usbback_part=PASS usbback_write_MBps=${m% *} usbback_read_MBps=${m#* } $(ratio "$m" usbback)"
# The captured USB/IP streams (vhci-hcd <-> usbfront, both vusbs): the
# same checks and replay as core/usbip/testdata/vhci gets in go test.
# Devid 0 is QEMU's qusb with the stick, devid 1 our usbback's disk.
CAP=/tmp/vhci-cap
/lab/vhci-capture.sh $LOG $CAP || fail capture-extract
mv $CAP/0-1.cmd $CAP/msc-qusb-stick.cmd && mv $CAP/0-1.ret $CAP/msc-qusb-stick.ret || fail "no-capture-of-0-1 $(ls $CAP)"
mv $CAP/1-1.cmd $CAP/msc-pvusb-emu.cmd && mv $CAP/1-1.ret $CAP/msc-pvusb-emu.ret || fail "no-capture-of-1-1 $(ls $CAP)"
PVUSB_VHCI_CAPTURE=$CAP /lab/bin/usbip.test -test.run '^TestKernelVHCIStreams$' -test.v >/tmp/lab-vhci-capture.log 2>&1 ||
	fail "vhci-capture-check $(grep -a -m3 -E 'capture_test|FAIL' /tmp/lab-vhci-capture.log | tr -s ' \t\n' ' ')"
note "vhci_capture=PASS cmd_bytes=$(cat $CAP/*.cmd | wc -c) ret_bytes=$(cat $CAP/*.ret | wc -c)"
# Part 3 (in the domU): usbfront closed and started again with --export;
# Linux's usbip lists and attaches the disk; the data is still there.
waitfor "DOMU RESULT3" 200 || fail no-result3-from-domU
grep -aq "DOMU usbip-list: .* 1-1: " $LOG || fail usbip-list-lacks-1-1
grep -aq "DOMU usbip-attach: .*error" $LOG && fail "usbip-attach-error $(grep -a 'DOMU usbip-attach' $LOG | tr -s ' \r\n' ' ')"
r=$(grep -a "DOMU RESULT3" $LOG | head -1)
r=${r#*DOMU RESULT3 }
case $r in storage=PASS*) ;; *) fail "usbip-attach-part $r" ;; esac
note "export_part=PASS usbip_attach=ok reconnect=ok export_read_MBps=$(echo "$r" | awk '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]} if (v["read_s"]>0) printf "%.3f", v["size_mib"]*1.048576/v["read_s"]}')"
xl destroy pvf 2>/dev/null
kill $UB
wait $UB
echo "LAB RESULT pvusb-frontend PASS$facts"

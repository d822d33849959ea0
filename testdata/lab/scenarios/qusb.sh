#!/bin/sh
# The reference path and the live ring dump, in one domU:
#   qusb-reference  Linux xen-hcd (domU) <-> QEMU's qusb backend (dom0),
#                   the EHCI stick attached with xl usbdev-attach, 16 MiB
#                   O_DIRECT write/read/compare in the domU, MB/s reported
#   ringdump-live   while that domU is connected: pvusb ringdump --live maps
#                   its rings read-only and decodes them; --watch redraws
want=$1
has() { case " $want " in *" $1 "*) return 0 ;; esac; return 1; }
LOG=/var/log/xen/console/guest-qusb.log
. "$(dirname "$0")/lib.sh"
fail() { # reason
	has qusb-reference && echo "LAB RESULT qusb-reference FAIL reason=$1"
	has ringdump-live && echo "LAB RESULT ringdump-live FAIL reason=$1"
	tail -40 $LOG 2>/dev/null | sed 's/^/  domU: /'
	exit 1
}
BUSID=""
for d in /sys/bus/usb/devices/*; do [ "$(cat $d/serial 2>/dev/null)" = LABSTICK01 ] && BUSID=$(basename $d); done
[ -n "$BUSID" ] || fail no-usb-stick-in-dom0
BUS=$(cat /sys/bus/usb/devices/$BUSID/busnum)
DEV=$(cat /sys/bus/usb/devices/$BUSID/devnum)
echo "LAB stick busid=$BUSID hostbus=$BUS hostaddr=$DEV speed=$(cat /sys/bus/usb/devices/$BUSID/speed)"
hold=0
has ringdump-live && hold=8
sed "s/LABHOLD/labhold=$hold/" /root/domU-qusb.cfg >/tmp/qusb.cfg
t0=$(ts)
xl create /tmp/qusb.cfg >/tmp/xl-create.log 2>&1 || { cat /tmp/xl-create.log; fail xl-create; }
D=$(xl domid qusb)
waitfor "DOMU READY" 120 || fail domU-not-ready
xl usbdev-attach qusb hostbus=$BUS hostaddr=$DEV || fail usbdev-attach
waitfor "DOMU DEVICE" 120 || fail domU-saw-no-disk
echo "LAB domU $D sees the stick $(since $t0)s after create"

if has ringdump-live; then
	pvusb ringdump --live --domid "$D" --devid 0 >/tmp/ringdump.txt 2>&1
	rc=$?
	sed 's/^/  ringdump: /' /tmp/ringdump.txt | grep -v 'slots 2\.\.' | head -60
	pvusb ringdump --live --domid "$D" --devid 0 --json >/tmp/ringdump.json 2>&1
	# --watch through the I/O that starts when the domU's hold ends
	timeout 30 pvusb ringdump --live --domid "$D" --devid 0 --watch --interval 300ms --frames 3 >/tmp/watch.txt 2>&1 &
	WP=$!
	conn_posted=$(sed -n '/^conn ring/,$p' /tmp/ringdump.txt | grep -c '512 request(s) posted')
	plug=$(grep -c 'port 1 speed high' /tmp/ringdump.txt)
	json_ok=$(grep -c '"conn":{"kind":"conn"' /tmp/ringdump.json)
fi
waitfor "DOMU RESULT" 240 || fail no-result-from-domU
r=$(grep -a "DOMU RESULT" $LOG | head -1)
r=${r#*DOMU RESULT }
if has qusb-reference; then
	set -- $r
	st=${1#storage=}
	mbps=$(echo "$r" | awk '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]} if (v["write_s"]>0 && v["read_s"]>0) printf "write_MBps=%.2f read_MBps=%.2f", v["size_mib"]*1.048576/v["write_s"], v["size_mib"]*1.048576/v["read_s"]}')
	[ "$st" = PASS ] && ok=PASS || ok=FAIL
	echo "$r" | awk '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]} if (v["write_s"]>0 && v["read_s"]>0) printf "%.3f %.3f\n", v["size_mib"]*1.048576/v["write_s"], v["size_mib"]*1.048576/v["read_s"]}' >/tmp/qusb.mbps
	echo "LAB RESULT qusb-reference $ok $r $mbps pins=$(cat /lab/pins)"
fi
if has ringdump-live; then
	wait $WP 2>/dev/null
	frames=$(grep -c '^=== frame' /tmp/watch.txt)
	if [ "$rc" -eq 0 ] && [ "$conn_posted" -ge 1 ] && [ "$plug" -ge 1 ] && [ "$json_ok" -ge 1 ] && [ "$frames" -ge 2 ]; then
		ok=PASS
	else
		ok=FAIL
	fi
	echo "LAB RESULT ringdump-live $ok rc=$rc conn_posted_512=$conn_posted port1_high=$plug json=$json_ok watch_frames=$frames"
fi
xl destroy qusb 2>/dev/null
exit 0

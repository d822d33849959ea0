#!/bin/sh
# pvusb-backend: our backend in dom0 serves Linux's own xen-hcd in a PV
# domU. The domain starts without a controller; pvusb usbback writes the
# vusb nodes as libxl would (create = true), xen-hcd probes and connects,
# and the domU runs the 16 MiB O_DIRECT write/read/compare on an emulated
# disk served by usbback. Throughput is reported as a ratio to
# qusb-reference when that ran in the same boot.
LOG=/var/log/xen/console/guest-pvb.log
. "$(dirname "$0")/lib.sh"
fail() {
	echo "LAB RESULT pvusb-backend FAIL reason=$1"
	tail -30 $LOG 2>/dev/null | sed 's/^/  domU: /'
	sed 's/^/  usbback: /' /tmp/lab-usbback.log 2>/dev/null | tail -30
	kill $UB 2>/dev/null
	xl destroy pvb 2>/dev/null
	exit 1
}
xl create /root/domU-plain.cfg >/tmp/xl-create-pvb.log 2>&1 || { cat /tmp/xl-create-pvb.log; fail xl-create; }
D=$(xl domid pvb)
waitfor "DOMU READY" 120 || fail domU-not-ready
truncate -s 32M /tmp/pvb.img
cat >/tmp/pvb.toml <<EOT
control = "/run/pvusb/usbback.sock"
rules = ["emu-msc:/tmp/pvb.img:$D:0:1"]
[[controller]]
domid = $D
devid = 0
ports = 4
create = true
EOT
t0=$(ts)
pvusb usbback -c /tmp/pvb.toml >/tmp/lab-usbback.log 2>&1 &
UB=$!
waitfor "DOMU DEVICE" 120 || fail domU-saw-no-disk
echo "LAB domU $D sees the emulated disk $(since $t0)s after usbback started"
waitfor "DOMU RESULT" 240 || fail no-result-from-domU
pvusb vportctl -c /tmp/pvb.toml list | sed 's/^/  vportctl: /'
r=$(grep -a "DOMU RESULT" $LOG | head -1)
r=${r#*DOMU RESULT }
set -- $r
[ "${1#storage=}" = PASS ] && ok=PASS || ok=FAIL
mbps=$(mbps "$r")
ratio=$(ratio "$mbps")
kill $UB
wait $UB
xl destroy pvb 2>/dev/null
echo "LAB RESULT pvusb-backend $ok $r write_MBps=${mbps% *} read_MBps=${mbps#* } $ratio"

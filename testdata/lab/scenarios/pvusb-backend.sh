#!/bin/sh
# pvusb-backend: our backend in dom0 serves Linux's own xen-hcd in a PV
# domU. The domain starts without a controller; pvusb usbback writes the
# vusb nodes as libxl would (create = true), xen-hcd probes and connects,
# and the domU runs the 16 MiB O_DIRECT write/read/compare on an emulated
# disk served by usbback. Throughput is reported as a ratio to
# qusb-reference when that ran in the same boot.
ts() { cut -d' ' -f1 /proc/uptime; }
LOG=/var/log/xen/console/guest-pvb.log
waitfor() {
	i=0
	while ! grep -aq "$1" $LOG 2>/dev/null && [ $i -lt $(($2 * 5)) ]; do sleep 0.2; i=$((i + 1)); done
	grep -aq "$1" $LOG 2>/dev/null
}
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
echo "LAB domU $D sees the emulated disk $(awk -v a=$t0 -v b=$(ts) 'BEGIN{printf "%.1f", b-a}')s after usbback started"
waitfor "DOMU RESULT" 240 || fail no-result-from-domU
pvusb vportctl -c /tmp/pvb.toml list | sed 's/^/  vportctl: /'
r=$(grep -a "DOMU RESULT" $LOG | head -1)
r=${r#*DOMU RESULT }
set -- $r
[ "${1#storage=}" = PASS ] && ok=PASS || ok=FAIL
mbps=$(echo "$r" | awk '{for(i=1;i<=NF;i++){split($i,kv,"="); v[kv[1]]=kv[2]} if (v["write_s"]>0 && v["read_s"]>0) printf "%.3f %.3f", v["size_mib"]*1.048576/v["write_s"], v["size_mib"]*1.048576/v["read_s"]}')
ratio=""
if [ -s /tmp/qusb.mbps ] && [ -n "$mbps" ]; then
	ratio=$(echo "$mbps $(cat /tmp/qusb.mbps)" | awk '{printf "write_ratio_vs_qusb=%.2f read_ratio_vs_qusb=%.2f", $1/$3, $2/$4}')
fi
kill $UB
wait $UB
xl destroy pvb 2>/dev/null
echo "LAB RESULT pvusb-backend $ok $r write_MBps=${mbps% *} read_MBps=${mbps#* } $ratio"

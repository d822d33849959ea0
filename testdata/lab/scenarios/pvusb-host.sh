#!/bin/sh
# pvusb-host: a real host device through usbfs. QEMU's EHCI stick, which
# dom0's usb-storage holds, is served by pvusb usbback to Linux xen-hcd in
# a PV domU whose controller xl creates (usbctrl type=pv; the daemon runs
# with adopt = true and answers InitWait within libxl's wait):
#   - gousb (libusb) and sysfs agree on the host's devices
#   - pvusb bench --host: the stick through pvusb against gousb directly
#   - vportctl add takes the stick from dom0's usb-storage (usbfs claims it)
#   - the domU's 16 MiB O_DIRECT write/read/compare passes; MB/s as a
#     ratio to qusb-reference (the same stick) in this boot
#   - vportctl del during the domU's reads: the domU sees the disk go,
#     dom0's usb-storage gets the stick back
#   - vportctl add again: the domU sees it again and it still holds the data
#   - xl destroy during the domU's reads: no libxl error, the backend
#     reaches Closed, the nodes go, dom0 gets the stick back
LOG=/var/log/xen/console/guest-pvh.log
UBLOG=/tmp/lab-usbback-host.log
. "$(dirname "$0")/lib.sh"
fail() {
	echo "LAB RESULT pvusb-host FAIL reason=$1 $facts"
	tail -30 $LOG 2>/dev/null | sed 's/^/  domU: /'
	tail -40 $UBLOG 2>/dev/null | sed 's/^/  usbback: /'
	kill $UB 2>/dev/null
	xl destroy pvh 2>/dev/null
	exit 1
}
# driver IF: the kernel driver holding the stick's interface 0
driver() { basename "$(readlink /sys/bus/usb/devices/$BUSID:1.0/driver 2>/dev/null)" 2>/dev/null; }
waitdriver() { # name timeout_s
	i=0
	while [ "$(driver)" != "$1" ] && [ $i -lt $(($2 * 5)) ]; do sleep 0.2; i=$((i + 1)); done
	[ "$(driver)" = "$1" ]
}
BUSID=""
for d in /sys/bus/usb/devices/*; do [ "$(cat $d/serial 2>/dev/null)" = LABSTICK01 ] && BUSID=$(basename $d); done
[ -n "$BUSID" ] || fail no-usb-stick-in-dom0
waitdriver usb-storage 30 || fail "dom0-driver-is-$(driver)"

pvusb vportctl devices --via libusb >/tmp/devices.txt 2>&1 || fail libusb-list
sed 's/^/  /' /tmp/devices.txt
grep -q "$BUSID .*LABSTICK01" /tmp/devices.txt || fail libusb-misses-the-stick
pvusb vportctl devices --cross-check || fail libusb-sysfs-disagree
note gousb_cross_check=ok

# pvusb bench --host: the stick read through pvusb (usbfs, our backend
# and frontend on the simulator, here in dom0) against gousb reading it
# directly, in one run; dom0's usb-storage gets it back afterwards.
timeout 400 pvusb bench --quick --json --host "$BUSID" >/tmp/bench-host.json 2>/tmp/lab-bench-host.log ||
	fail "bench-host $(tail -3 /tmp/lab-bench-host.log | tr -s '\n' ' ')"
hb=$(awk '/"name": "host device /{f=1} f && /"value":/{v=$2} f && /"reference_value":/{r=$2} f && /"ratio":/{gsub(",","",v); gsub(",","",r); printf "bench_host_MBps=%.2f bench_gousb_MBps=%.2f bench_host_ratio_vs_gousb=%.2f", v/1e6, r/1e6, $2; exit}' /tmp/bench-host.json)
[ -n "$hb" ] || fail "bench-host-no-result $(head -c 300 /tmp/bench-host.json)"
note "$hb"
waitdriver usb-storage 30 || fail "dom0-driver-after-bench-is-$(driver)"

cat >/tmp/host.toml <<EOT
control = "/run/pvusb/host.sock"
adopt = true
EOT
pvusb usbback -c /tmp/host.toml >$UBLOG 2>&1 &
UB=$!
i=0
while [ ! -S /run/pvusb/host.sock ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
t0=$(ts)
xl create /root/domU-pvhost.cfg >/tmp/xl-create-pvh.log 2>&1 || { cat /tmp/xl-create-pvh.log; fail xl-create; }
grep -qi "error" /tmp/xl-create-pvh.log && { cat /tmp/xl-create-pvh.log; fail xl-create-error; }
D=$(xl domid pvh)
note "xl_create_s=$(since $t0)"
BE=/local/domain/0/backend/vusb/$D/0
[ "$(xenstore-read $BE/state)" = 4 ] || [ "$(xenstore-read $BE/state)" = 2 ] || fail "backend-state-$(xenstore-read $BE/state)"
waitfor "DOMU READY" 120 || fail domU-not-ready

pvusb vportctl -s /run/pvusb/host.sock add "$BUSID:$D:0:1" || fail vportctl-add
waitdriver usbfs 20 || fail "stick-not-claimed-driver-$(driver)"
note taken_from_dom0=usbfs
[ "$(xenstore-read $BE/port/1)" = "$BUSID" ] || fail port-node
waitfor "DOMU DEVICE" 120 || fail domU-saw-no-disk
waitfor "DOMU RESULT" 300 || fail no-result-from-domU
pvusb vportctl -s /run/pvusb/host.sock list | sed 's/^/  vportctl: /'
r=$(grep -a "DOMU RESULT" $LOG | head -1)
r=${r#*DOMU RESULT }
case $r in storage=PASS*) ;; *) fail "storage $r" ;; esac
mbps=$(mbps "$r")
note "$r write_MBps=${mbps% *} read_MBps=${mbps#* } $(ratio "$mbps")"

# Unplug during I/O.
waitfor "DOMU LOOP reading" 60 || fail no-read-loop
sleep 2
pvusb vportctl -s /run/pvusb/host.sock del "$D:0:1" || fail vportctl-del
waitfor "DOMU GONE at" 120 || fail domU-still-sees-the-disk
note unplug_during_io=ok
waitdriver usb-storage 30 || fail "dom0-did-not-get-it-back-driver-$(driver)"
note dom0_back_after_del=usb-storage
# Replug.
pvusb vportctl -s /run/pvusb/host.sock add "$BUSID:$D:0:1" || fail vportctl-re-add
waitfor "DOMU BACK" 120 || fail domU-no-replug
grep -aq "DOMU BACK storage=PASS" $LOG || fail "replug-$(grep -a 'DOMU BACK' $LOG)"
note replug=data-intact

# xl destroy during I/O.
waitfor "DOMU LOOP2" 60 || fail no-second-read-loop
sleep 2
t1=$(ts)
xl destroy pvh >/tmp/xl-destroy.log 2>&1
rc=$?
note "xl_destroy_rc=$rc xl_destroy_s=$(since $t1)"
[ $rc -eq 0 ] || { cat /tmp/xl-destroy.log; fail xl-destroy; }
grep -qi "error\|timeout\|timed out" /tmp/xl-destroy.log && { cat /tmp/xl-destroy.log; fail xl-destroy-error; }
i=0
while xenstore-exists $BE 2>/dev/null && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
xenstore-exists $BE 2>/dev/null && fail backend-nodes-left
grep -q "Closed for the toolstack\|mirrored frontend.*Closed\|frontend vanished" $UBLOG || fail backend-never-closed
note backend_closed=yes
waitdriver usb-storage 30 || fail "dom0-did-not-get-it-back-after-destroy-driver-$(driver)"
note dom0_back_after_destroy=usb-storage
pvusb vportctl -s /run/pvusb/host.sock list >/tmp/list-after.txt 2>&1
grep -q "^$D:0:" /tmp/list-after.txt && fail controller-still-listed
kill $UB
wait $UB
echo "LAB RESULT pvusb-host PASS$facts"

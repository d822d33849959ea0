package usbfs

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Messages as Linux 6.1 sends them when QEMU's EHCI stick arrives (the
// device, then its interface) and leaves.
func msg(parts ...string) []byte { return []byte(strings.Join(parts, "\x00") + "\x00") }

var (
	addDevice = msg("add@/devices/pci0000:00/0000:00:05.0/usb1/1-1", "ACTION=add",
		"DEVPATH=/devices/pci0000:00/0000:00:05.0/usb1/1-1", "SUBSYSTEM=usb", "MAJOR=189", "MINOR=1",
		"DEVNAME=bus/usb/001/002", "DEVTYPE=usb_device", "PRODUCT=46f4/1/0", "TYPE=0/0/0",
		"BUSNUM=001", "DEVNUM=002", "SEQNUM=1602")
	addInterface = msg("add@/devices/pci0000:00/0000:00:05.0/usb1/1-1/1-1:1.0", "ACTION=add",
		"DEVPATH=/devices/pci0000:00/0000:00:05.0/usb1/1-1/1-1:1.0", "SUBSYSTEM=usb", "DEVTYPE=usb_interface",
		"PRODUCT=46f4/1/0", "TYPE=0/0/0", "INTERFACE=8/6/80", "MODALIAS=usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00", "SEQNUM=1603")
	removeHubChild = msg("remove@/devices/pci0000:00/0000:00:1d.0/usb2/2-1/2-1.4", "ACTION=remove",
		"DEVPATH=/devices/pci0000:00/0000:00:1d.0/usb2/2-1/2-1.4", "SUBSYSTEM=usb", "DEVNAME=/dev/bus/usb/002/007",
		"DEVTYPE=usb_device", "PRODUCT=46d/c077/7200", "TYPE=0/0/0", "BUSNUM=002", "DEVNUM=007", "SEQNUM=2001")
	addRootHub = msg("add@/devices/pci0000:00/0000:00:05.0/usb1", "ACTION=add", "DEVPATH=/devices/pci0000:00/0000:00:05.0/usb1",
		"SUBSYSTEM=usb", "DEVTYPE=usb_device", "BUSNUM=001", "DEVNUM=001")
)

func TestParseUevent(t *testing.T) {
	ev, ok := ParseUevent(addDevice)
	if !ok || ev != (Event{Action: "add", Busid: "1-1", Bus: 1, Dev: 2, Product: "46f4/1/0"}) {
		t.Fatalf("%+v %v", ev, ok)
	}
	ev, ok = ParseUevent(removeHubChild)
	if !ok || ev.Action != "remove" || ev.Busid != "2-1.4" || ev.Dev != 7 {
		t.Fatalf("%+v %v", ev, ok)
	}
	for name, b := range map[string][]byte{
		"interface": addInterface, "root hub": addRootHub, "empty": nil, "no header": msg("ACTION=add"),
		"udev": append([]byte("libudev\x00"), addDevice...),
		"net":  msg("change@/devices/virtual/net/lo", "ACTION=change", "DEVPATH=/devices/virtual/net/lo", "SUBSYSTEM=net"),
		"huge": append(addDevice, bytes.Repeat([]byte{'x'}, maxUevent)...),
	} {
		if ev, ok := ParseUevent(b); ok {
			t.Errorf("%s: accepted %+v", name, ev)
		}
	}
}

// The real netlink path: a uevent the kernel sends (triggered by writing
// "change" to a device's uevent file) arrives from port 0; a message a
// process sends to the monitor directly is ignored.
func TestMonitorReadsKernelMessagesOnly(t *testing.T) {
	m, err := OpenMonitor()
	if err != nil {
		t.Fatalf("uevent socket (CI runs as root): %v", err)
	}
	defer m.Close()
	sa, err := unix.Getsockname(monitorFD(t, m))
	if err != nil {
		t.Fatal(err)
	}
	fake, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fake)
	if err := unix.Sendto(fake, addDevice, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: sa.(*unix.SockaddrNetlink).Pid}); err != nil {
		t.Fatalf("send a forged uevent: %v", err)
	}
	if err := os.WriteFile("/sys/devices/virtual/mem/null/uevent", []byte("change"), 0); err != nil {
		t.Fatalf("trigger a kernel uevent: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		b, err := m.next(ctx)
		if err != nil {
			t.Fatalf("no kernel uevent: %v", err)
		}
		if bytes.Equal(b, addDevice) {
			t.Fatal("a forged message from a process was believed")
		}
		if bytes.Contains(b, []byte("DEVPATH=/devices/virtual/mem/null")) {
			break
		}
	}
	if m.ignored != 1 {
		t.Fatalf("%d messages ignored, want the forged one", m.ignored)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := m.Next(ctx2); err != context.DeadlineExceeded {
		t.Fatalf("Next after the deadline: %v", err)
	}
}

func monitorFD(t *testing.T, m *Monitor) int {
	var fd int
	if err := m.rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// The real device-file path below the ioctl: a file that is not usbfs
// answers ENOTTY, so the syscall and its argument passing run for real.
func TestRealFileIoctlPath(t *testing.T) {
	f, err := openFile("/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	if _, err := f.ioctl(IoctlSubmitURB, 0); err != unix.ENOTTY {
		t.Fatalf("SUBMITURB on /dev/null: %v", err)
	}
	if b, err := f.read(); err != nil || len(b) != 0 {
		t.Fatalf("read: %d bytes, %v", len(b), err)
	}
}

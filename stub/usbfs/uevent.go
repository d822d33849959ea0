package usbfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Event is a USB device arriving or leaving, from the kernel's uevents.
type Event struct {
	Action   string // "add", "remove", "bind", "unbind", "change"
	Busid    string // "1-2.3"
	Bus, Dev int    // BUSNUM, DEVNUM
	Product  string // PRODUCT: "vid/pid/bcd" in hex without leading zeros
}

// maxUevent bounds one uevent message (the kernel's UEVENT_BUFFER_SIZE is 2048).
const maxUevent = 8192

// ParseUevent reads one kernel uevent message ("ACTION@DEVPATH\0KEY=VALUE\0…").
// It reports ok only for whole USB devices (SUBSYSTEM=usb,
// DEVTYPE=usb_device), not their interfaces, and never for messages from
// udev (which start "libudev").
func ParseUevent(b []byte) (Event, bool) {
	if len(b) > maxUevent || bytes.HasPrefix(b, []byte("libudev")) {
		return Event{}, false
	}
	fields := bytes.Split(b, []byte{0})
	if len(fields) < 2 || !bytes.Contains(fields[0], []byte("@")) {
		return Event{}, false
	}
	kv := map[string]string{}
	for _, f := range fields[1:] {
		if k, v, ok := bytes.Cut(f, []byte("=")); ok {
			kv[string(k)] = string(v)
		}
	}
	if kv["SUBSYSTEM"] != "usb" || kv["DEVTYPE"] != "usb_device" || kv["DEVPATH"] == "" {
		return Event{}, false
	}
	ev := Event{Action: kv["ACTION"], Busid: path.Base(kv["DEVPATH"]), Product: kv["PRODUCT"]}
	if !busidRE.MatchString(ev.Busid) {
		return Event{}, false // a root hub (usbN)
	}
	ev.Bus, _ = strconv.Atoi(kv["BUSNUM"])
	ev.Dev, _ = strconv.Atoi(kv["DEVNUM"])
	return ev, ev.Action != ""
}

// Monitor receives the kernel's uevents (NETLINK_KOBJECT_UEVENT, the
// kernel's multicast group 1) on the Go netpoller.
type Monitor struct {
	f       *os.File
	rc      syscall.RawConn
	buf     []byte
	ignored int // messages not from the kernel
}

// OpenMonitor starts listening; events from before it are not seen (scan
// Host.List after opening it).
func OpenMonitor() (*Monitor, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent bind: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Monitor{f: f, rc: rc, buf: make([]byte, maxUevent)}, nil
}

// aLongTimeAgo is a read deadline in the past: it wakes a blocked Next.
var aLongTimeAgo = time.Unix(1, 0)

// Next returns the next USB device event, skipping everything else.
func (m *Monitor) Next(ctx context.Context) (Event, error) {
	for {
		b, err := m.next(ctx)
		if err != nil {
			return Event{}, err
		}
		if ev, ok := ParseUevent(b); ok {
			return ev, nil
		}
	}
}

// next returns the next message from the kernel (netlink port 0); others
// are not believed: any root process may send to our socket.
func (m *Monitor) next(ctx context.Context) ([]byte, error) {
	stop := context.AfterFunc(ctx, func() { m.f.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	for {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := m.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), m.buf, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			return nil, err
		}
		if errors.Is(rerr, unix.ENOBUFS) {
			continue // the kernel dropped events; callers rescan on their own schedule
		}
		if rerr != nil {
			return nil, rerr
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			m.ignored++
			continue
		}
		return m.buf[:n], nil
	}
}

// Close stops the monitor.
func (m *Monitor) Close() error { return m.f.Close() }

package evtchn

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DevicePath is the Xen event-channel device.
const DevicePath = "/dev/xen/evtchn"

func ioc(nr, size uintptr) uintptr { return size<<16 | uintptr('E')<<8 | nr }

// ioctl numbers (xen/sys/evtchn.h; checked by xen_test.go).
var (
	IoctlBindVirq        = ioc(0, 4)
	IoctlBindInterdomain = ioc(1, 8)
	IoctlBindUnboundPort = ioc(2, 4)
	IoctlUnbind          = ioc(3, 4)
	IoctlNotify          = ioc(4, 4)
	IoctlReset           = ioc(5, 0)
	IoctlRestrictDomid   = ioc(6, 2)
)

var le = binary.LittleEndian

// bindInterdomainArg is struct ioctl_evtchn_bind_interdomain: remote_domain u32, remote_port u32.
func bindInterdomainArg(dom uint32, port Port) []byte {
	b := make([]byte, 8)
	le.PutUint32(b[0:], dom)
	le.PutUint32(b[4:], uint32(port))
	return b
}

// u32Arg is the one-u32 argument of BIND_UNBOUND_PORT, UNBIND, NOTIFY, BIND_VIRQ.
func u32Arg(v uint32) []byte {
	b := make([]byte, 4)
	le.PutUint32(b, v)
	return b
}

// sysOps is the kernel seam: real syscalls, or a recorder in tests. Ioctl
// returns the ioctl's return value (the port, for binds).
type sysOps interface {
	Ioctl(fd int, req uintptr, arg []byte) (int, error)
}

// Xen is Channels over /dev/xen/evtchn. The fd is non-blocking and rides
// Go's netpoller, so Wait blocks no OS thread and Close wakes it.
type Xen struct {
	f   *os.File
	fd  int
	sys sysOps

	mu    sync.Mutex
	bound map[Port]uint32 // port -> remote domain
	queue []Port          // fired ports read but not yet returned
	buf   [4 * 64]byte
}

// OpenXen opens /dev/xen/evtchn.
func OpenXen() (*Xen, error) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", DevicePath, err)
	}
	return &Xen{f: os.NewFile(uintptr(fd), DevicePath), fd: fd, sys: realSys{}, bound: map[Port]uint32{}}, nil
}

func (x *Xen) bind(op string, dom uint32, req uintptr, arg []byte) (Port, error) {
	r, err := x.sys.Ioctl(x.fd, req, arg)
	if err != nil {
		return 0, &OpError{Op: op, Dom: dom, Err: os.NewSyscallError("ioctl", err)}
	}
	p := Port(r)
	x.mu.Lock()
	x.bound[p] = dom
	x.mu.Unlock()
	return p, nil
}

// BindInterdomain is IOCTL_EVTCHN_BIND_INTERDOMAIN.
func (x *Xen) BindInterdomain(dom uint32, remote Port) (Port, error) {
	return x.bind("bind interdomain", dom, IoctlBindInterdomain, bindInterdomainArg(dom, remote))
}

// BindUnbound is IOCTL_EVTCHN_BIND_UNBOUND_PORT.
func (x *Xen) BindUnbound(dom uint32) (Port, error) {
	return x.bind("bind unbound", dom, IoctlBindUnboundPort, u32Arg(dom))
}

// Unbind is IOCTL_EVTCHN_UNBIND.
func (x *Xen) Unbind(p Port) error {
	x.mu.Lock()
	dom, ok := x.bound[p]
	delete(x.bound, p)
	x.mu.Unlock()
	if !ok {
		return &OpError{Op: "unbind", Port: p, Err: ErrNotBound}
	}
	if _, err := x.sys.Ioctl(x.fd, IoctlUnbind, u32Arg(uint32(p))); err != nil {
		return &OpError{Op: "unbind", Dom: dom, Port: p, Err: os.NewSyscallError("ioctl", err)}
	}
	return nil
}

// Notify is IOCTL_EVTCHN_NOTIFY.
func (x *Xen) Notify(p Port) error {
	if _, err := x.sys.Ioctl(x.fd, IoctlNotify, u32Arg(uint32(p))); err != nil {
		return &OpError{Op: "notify", Port: p, Err: os.NewSyscallError("ioctl", err)}
	}
	return nil
}

// Wait reads fired ports. On overflow (EFBIG: the kernel's queue filled)
// it resets the device and reports every bound port as fired, so the
// caller rescans all its rings and nothing is lost.
func (x *Xen) Wait(ctx context.Context) (Port, error) {
	for {
		x.mu.Lock()
		if len(x.queue) > 0 {
			p := x.queue[0]
			x.queue = x.queue[1:]
			x.mu.Unlock()
			return p, nil
		}
		x.mu.Unlock()
		stop := context.AfterFunc(ctx, func() { _ = x.f.SetReadDeadline(time.Now()) })
		n, err := x.f.Read(x.buf[:])
		stop()
		if err != nil {
			if ctx.Err() != nil {
				_ = x.f.SetReadDeadline(time.Time{})
				return 0, ctx.Err()
			}
			if errors.Is(err, syscall.EFBIG) {
				if _, rerr := x.sys.Ioctl(x.fd, IoctlReset, nil); rerr != nil {
					return 0, &OpError{Op: "reset", Err: os.NewSyscallError("ioctl", rerr)}
				}
				x.mu.Lock()
				for p := range x.bound {
					x.queue = append(x.queue, p)
				}
				x.mu.Unlock()
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return 0, ErrClosed
			}
			return 0, &OpError{Op: "wait", Err: err}
		}
		x.mu.Lock()
		for i := 0; i+4 <= n; i += 4 {
			x.queue = append(x.queue, Port(le.Uint32(x.buf[i:])))
		}
		x.mu.Unlock()
	}
}

// Unmask writes the port back, re-enabling it (a late EOI on current kernels).
func (x *Xen) Unmask(p Port) error {
	if _, err := x.f.Write(u32Arg(uint32(p))); err != nil {
		return &OpError{Op: "unmask", Port: p, Err: err}
	}
	return nil
}

// Close unbinds everything and wakes a Wait.
func (x *Xen) Close() error { return x.f.Close() }

type realSys struct{}

func (realSys) Ioctl(fd int, req uintptr, arg []byte) (int, error) { return ioctl(fd, req, arg) }

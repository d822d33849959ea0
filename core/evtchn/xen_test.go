package evtchn

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/internal/ctest"
)

const abiC = `
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/sys/evtchn.h>
#define P(n, x) printf("%s %lld\n", n, (long long)(x))
int main(int argc, char **argv) {
  if (argc > 1) {
    struct ioctl_evtchn_bind_interdomain b = { .remote_domain = 7, .remote_port = 0x1234 };
    const unsigned char *p = (const void *)&b; printf("bind 0x");
    for (size_t i = 0; i < sizeof b; i++) printf("%02x", p[i]);
    printf("\n");
    return 0;
  }
  P("IOCTL_EVTCHN_BIND_VIRQ", IOCTL_EVTCHN_BIND_VIRQ);
  P("IOCTL_EVTCHN_BIND_INTERDOMAIN", IOCTL_EVTCHN_BIND_INTERDOMAIN);
  P("IOCTL_EVTCHN_BIND_UNBOUND_PORT", IOCTL_EVTCHN_BIND_UNBOUND_PORT);
  P("IOCTL_EVTCHN_UNBIND", IOCTL_EVTCHN_UNBIND);
  P("IOCTL_EVTCHN_NOTIFY", IOCTL_EVTCHN_NOTIFY);
  P("IOCTL_EVTCHN_RESET", IOCTL_EVTCHN_RESET);
  P("IOCTL_EVTCHN_RESTRICT_DOMID", IOCTL_EVTCHN_RESTRICT_DOMID);
  P("sizeof.bind_interdomain", sizeof(struct ioctl_evtchn_bind_interdomain));
  P("sizeof.bind_unbound_port", sizeof(struct ioctl_evtchn_bind_unbound_port));
  P("sizeof.notify", sizeof(struct ioctl_evtchn_notify));
  return 0;
}`

func TestIoctlNumbersAndLayoutsMatchC(t *testing.T) {
	exe := ctest.Build(t, "evtchn_abi", abiC)
	ctest.Compare(t, ctest.Values(t, exe), map[string]int64{
		"IOCTL_EVTCHN_BIND_VIRQ": int64(IoctlBindVirq), "IOCTL_EVTCHN_BIND_INTERDOMAIN": int64(IoctlBindInterdomain),
		"IOCTL_EVTCHN_BIND_UNBOUND_PORT": int64(IoctlBindUnboundPort), "IOCTL_EVTCHN_UNBIND": int64(IoctlUnbind),
		"IOCTL_EVTCHN_NOTIFY": int64(IoctlNotify), "IOCTL_EVTCHN_RESET": int64(IoctlReset),
		"IOCTL_EVTCHN_RESTRICT_DOMID": int64(IoctlRestrictDomid),
		"sizeof.bind_interdomain":     8, "sizeof.bind_unbound_port": 4, "sizeof.notify": 4,
	})
	if c := ctest.HexArgs(t, exe, "bytes"); !bytes.Equal(c["bind"], bindInterdomainArg(7, 0x1234)) {
		t.Errorf("bind_interdomain: go % x, c % x", bindInterdomainArg(7, 0x1234), c["bind"])
	}
}

// fakeDevice plays /dev/xen/evtchn: a pipe stands in for the fd the
// kernel writes fired ports to, and ioctls are recorded.
type fakeDevice struct {
	calls [][2]uint64 // req, first u32 of arg
	next  int
}

func (d *fakeDevice) Ioctl(fd int, req uintptr, arg []byte) (int, error) {
	v := uint64(0)
	if len(arg) >= 4 {
		v = uint64(le.Uint32(arg))
	}
	d.calls = append(d.calls, [2]uint64{uint64(req), v})
	d.next++
	return 40 + d.next, nil
}

func newFakeXen(t *testing.T) (*Xen, *fakeDevice, *os.File, *os.File) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r, w := os.NewFile(uintptr(p[0]), "evtchn-r"), os.NewFile(uintptr(p[1]), "evtchn-w")
	d := &fakeDevice{}
	x := &Xen{f: r, fd: p[0], sys: d, bound: map[Port]uint32{}}
	t.Cleanup(func() { r.Close(); w.Close() })
	return x, d, r, w
}

func TestXenBelowTheIoctl(t *testing.T) {
	x, d, _, w := newFakeXen(t)
	p, err := x.BindInterdomain(3, 9)
	if err != nil || p != 41 || d.calls[0] != [2]uint64{uint64(IoctlBindInterdomain), 3} {
		t.Fatalf("bind interdomain: %v %v %v", p, err, d.calls)
	}
	u, _ := x.BindUnbound(0)
	if u != 42 || d.calls[1] != [2]uint64{uint64(IoctlBindUnboundPort), 0} {
		t.Errorf("bind unbound %v %v", u, d.calls)
	}
	x.Notify(p)
	if d.calls[2] != [2]uint64{uint64(IoctlNotify), 41} {
		t.Errorf("notify %v", d.calls[2])
	}
	// The kernel writes fired ports; Wait returns them in order.
	w.Write(append(u32Arg(41), u32Arg(42)...))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if got, err := x.Wait(ctx); got != 41 || err != nil {
		t.Errorf("wait %v %v", got, err)
	}
	if got, _ := x.Wait(ctx); got != 42 {
		t.Errorf("second port %v", got)
	}
	// Cancelling the context wakes a Wait blocked in the netpoller.
	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if _, err := x.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("wait after cancel: %v", err)
	}
	if err := x.Unbind(p); err != nil || d.calls[3] != [2]uint64{uint64(IoctlUnbind), 41} {
		t.Errorf("unbind %v %v", err, d.calls)
	}
	if err := x.Unbind(p); !errors.Is(err, ErrNotBound) {
		t.Errorf("double unbind: %v", err)
	}
}

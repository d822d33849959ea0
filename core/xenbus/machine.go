package xenbus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvusb/pvusb/xs"
)

// BackendConfig is what libxl put in the backend dir for the frontend and
// backend to read: usb-ver and num-ports.
type BackendConfig struct {
	NumPorts int // 1..31
	USBVer   int // 1 (USB 1.1) or 2 (USB 2.0)
}

// ReadBackendConfig reads and checks num-ports and usb-ver (§10.2 #14).
func ReadBackendConfig(h xs.Handle, backendDir string) (BackendConfig, error) {
	d := xs.NewDecoder(h, backendDir)
	cfg := BackendConfig{NumPorts: int(d.Uint("num-ports", 1, 31)), USBVer: int(d.Uint("usb-ver", 1, 2))}
	return cfg, d.Err()
}

// FrontendRings is what the frontend publishes in one transaction.
type FrontendRings struct {
	URBRingRef   uint32
	ConnRingRef  uint32
	EventChannel uint32
	Protocol     string // optional; xen-hcd does not write it
}

// ReadFrontendRings reads the three keys strictly: each a canonical u32.
func ReadFrontendRings(h xs.Handle, frontendDir string) (FrontendRings, error) {
	d := xs.NewDecoder(h, frontendDir)
	r := FrontendRings{
		URBRingRef:   uint32(d.Uint("urb-ring-ref", 0, 1<<32-1)),
		ConnRingRef:  uint32(d.Uint("conn-ring-ref", 0, 1<<32-1)),
		EventChannel: uint32(d.Uint("event-channel", 0, 1<<32-1)),
	}
	r.Protocol = d.OptionalString("protocol", "")
	return r, d.Err()
}

// events merges the watches of several paths into one coalescing signal:
// the machines re-read everything on each signal, so one pending signal
// stands for any number of events.
type events struct {
	c       chan struct{} // never closed: senders may outlive a reader
	gone    chan struct{} // closed once a watch ends (connection lost or closed)
	once    sync.Once
	watches []*xs.Watch
}

var tokenSeq atomic.Uint64

func watchPaths(c *xs.Client, paths ...string) (*events, error) {
	e := &events{c: make(chan struct{}, 1), gone: make(chan struct{})}
	for _, p := range paths {
		w, err := c.Watch(p, fmt.Sprintf("xenbus-%d", tokenSeq.Add(1)))
		if err != nil {
			e.close()
			return nil, err
		}
		e.watches = append(e.watches, w)
		go func() {
			for range w.Events {
				select {
				case e.c <- struct{}{}:
				default:
				}
			}
			e.once.Do(func() { close(e.gone) })
		}()
	}
	return e, nil
}

// errTimeout is what wait returns when the machine's timer fires.
var errTimeout = errors.New("xenbus: timed out")

// wait blocks until something may have changed; it returns ctx's error,
// errTimeout, or xs.ErrClosed when the machine must stop instead.
func (e *events) wait(ctx context.Context, timer <-chan time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer:
		return errTimeout
	case <-e.gone:
		return xs.ErrClosed
	case <-e.c:
		return nil
	}
}

func (e *events) close() {
	for _, w := range e.watches {
		_ = w.Unwatch()
	}
}

// exists reports whether a node exists.
func exists(h xs.Handle, path string) bool {
	ok, err := h.Exists(path)
	return ok && err == nil
}

// validBackendPath accepts /local/domain/<B>/backend/<type>/<F>/<D>.
func validBackendPath(p string) bool {
	parts := strings.Split(p, "/")
	return len(parts) == 8 && parts[0] == "" && parts[1] == "local" && parts[2] == "domain" && parts[4] == "backend" && xs.ValidPath(p) == nil
}

func fault(h xs.Handle, dir string, errno int, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	_ = Fatal(h, dir, errno, "%s", msg)
	return &FaultError{Dir: dir, Errno: errno, Msg: msg}
}

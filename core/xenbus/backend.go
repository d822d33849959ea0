package xenbus

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/pvusb/pvusb/xs"
)

// BackendDriver is the device side the backend machine drives.
type BackendDriver interface {
	// Init is called once online=1 with the checked configuration; an
	// error faults the device. (QEMU usbback_init.)
	Init(cfg BackendConfig) error
	// Connect maps the rings and binds the event channel the frontend
	// published. (QEMU usbback_connect.)
	Connect(r FrontendRings) error
	// Disconnect releases the rings; it is called at most once per Connect.
	Disconnect()
	// Changed reports a change under the backend dir while connected
	// (port/N nodes: hot-plug).
	Changed()
}

// Backend is the backend XenBus machine of one device, QEMU's sequence
// (usbif-protocol.md §3.3): check state 1 and the frontend path, wait for
// online=1, Init, write hotplug-status and InitWait; when the frontend is
// Initialised or Connected, Connect and write Connected; mirror the
// frontend's Closing and Closed; reset to Initialising when a Closed
// frontend comes back to Initialising.
type Backend struct {
	C      *xs.Client
	P      Paths
	Driver BackendDriver
	Log    *slog.Logger
	// Timeout bounds the wait for the frontend to connect after InitWait;
	// 0 waits forever, as QEMU does. On expiry the device faults.
	Timeout time.Duration
	// CloseTimeout bounds the wait for the frontend to close after the
	// toolstack asked for removal (online 0, state Closing): a guest being
	// destroyed never answers, and libxl waits for a pv backend's Closed
	// only about 10 s before it forces the removal with an error. On expiry
	// the backend writes Closed itself; 0 waits forever.
	CloseTimeout time.Duration
}

type bePhase int

const (
	beInit bePhase = iota
	beInitWait
	beConnected
	beClosing
	beClosed
)

// Run drives the device until ctx ends, the device is removed (the
// backend dir deleted: nil), or it faults (a *FaultError, also written to
// the error node with the state Closing).
func (b *Backend) Run(ctx context.Context) error {
	log := b.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("dom", b.P.FrontDom, "devid", b.P.DevID)
	h := b.C.Handle
	be, fe := b.P.Backend, b.P.Frontend
	st, err := ReadState(h, be)
	if err != nil {
		return err
	}
	if st != Initialising {
		// QEMU: "initial backend state is wrong"; libxl writes 1 at creation.
		return &FaultError{Dir: be, Errno: EINVAL, Msg: "initial backend state is " + st.String() + ", want Initialising"}
	}
	front, err := h.ReadString(be + "/frontend")
	if err != nil {
		return fault(h, be, EINVAL, "reading frontend path: %v", err)
	}
	if front != fe {
		return fault(h, be, EINVAL, "frontend path %q is not %q", front, fe)
	}
	// @releaseDomain: a frontend domain that dies writes nothing; without
	// a toolstack to remove the nodes (the simulator) this is how we hear.
	ev, err := watchPaths(b.C, be, fe, "@releaseDomain")
	if err != nil {
		return err
	}
	defer ev.close()
	if err := WriteState(h, be, Initialising); err != nil {
		return err
	}
	phase := beInit
	var timer <-chan time.Time
	disconnect := func() {
		if phase == beConnected {
			b.Driver.Disconnect()
			log.Info("xenbus backend: disconnected")
		}
	}
	for {
		if err := ev.wait(ctx, timer); err != nil {
			disconnect()
			if err == errTimeout && phase == beClosing {
				timer = nil
				if err := WriteState(h, be, Closed); err != nil {
					return err
				}
				phase = beClosed
				log.Info("xenbus backend: the frontend did not close; Closed for the toolstack", "after", b.CloseTimeout)
				continue
			}
			if err == errTimeout {
				return fault(h, be, ETIMEDOUT, "frontend did not connect within %v", b.Timeout)
			}
			return err
		}
		if !exists(h, be+"/state") {
			disconnect()
			log.Info("xenbus backend: device removed")
			return nil
		}
		bst, berr := ReadState(h, be)
		fst, ferr := ReadState(h, fe)
		if berr != nil {
			disconnect()
			return fault(h, be, EPROTO, "%v", berr)
		}
		if ferr != nil {
			disconnect()
			return fault(h, be, EPROTO, "%v", ferr)
		}
		online, _ := h.ReadString(be + "/online")

		// The toolstack asks for removal: online=0 and state Closing.
		if bst == Closing && phase < beClosing {
			disconnect()
			phase = beClosing
			timer = nil
			if b.CloseTimeout > 0 {
				timer = time.After(b.CloseTimeout)
			}
			log.Info("xenbus backend: closing at the toolstack's request")
		}
		switch {
		case fst == Closing || fst == Closed:
			if phase == beConnected || phase == beInitWait || phase == beClosing || phase == beInit {
				disconnect()
				timer = nil
				if bst != fst {
					if err := WriteState(h, be, fst); err != nil {
						return err
					}
					log.Info("xenbus backend: mirrored frontend", "state", fst)
				}
				if phase != beClosing {
					timer = nil
				}
				phase = beClosing
				if fst == Closed {
					phase = beClosed
					timer = nil
				}
			}
			continue
		case phase == beConnected && b.P.BackDom == 0 && !introduced(b.C, b.P.FrontDom):
			// The frontend's domain is gone: nothing will answer.
			disconnect()
			phase = beClosed
			if err := WriteState(h, be, Closed); err != nil {
				return err
			}
			log.Info("xenbus backend: frontend domain gone")
			continue
		case fst == Unknown && phase == beConnected:
			// The frontend vanished (its dir removed, its domain gone).
			disconnect()
			phase = beClosed
			if err := WriteState(h, be, Closed); err != nil {
				return err
			}
			log.Info("xenbus backend: frontend vanished")
			continue
		case phase == beClosed && fst == Initialising:
			// QEMU: "device reset (for re-connect)".
			if err := WriteState(h, be, Initialising); err != nil {
				return err
			}
			phase = beInit
			log.Info("xenbus backend: reset for reconnect")
		}

		if phase == beInit && online == "1" {
			cfg, err := ReadBackendConfig(h, be)
			if err != nil {
				return fault(h, be, EINVAL, "%v", err)
			}
			if err := b.Driver.Init(cfg); err != nil {
				return fault(h, be, ENODEV, "initialising: %v", err)
			}
			if err := h.WriteString(be+"/hotplug-status", "connected"); err != nil {
				return err
			}
			if err := WriteState(h, be, InitWait); err != nil {
				return err
			}
			phase = beInitWait
			if b.Timeout > 0 {
				timer = time.After(b.Timeout)
			}
			log.Info("xenbus backend: InitWait", "num-ports", cfg.NumPorts, "usb-ver", cfg.USBVer)
		}
		if phase == beInitWait && (fst == Initialised || fst == Connected) {
			r, err := ReadFrontendRings(h, fe)
			if err != nil {
				return fault(h, be, EINVAL, "reading ring references: %v", err)
			}
			if err := b.Driver.Connect(r); err != nil {
				return fault(h, be, ENODEV, "connecting: %v", err)
			}
			phase = beConnected
			timer = nil
			if err := WriteState(h, be, Connected); err != nil {
				return err
			}
			log.Info("xenbus backend: Connected", "urb-ring-ref", r.URBRingRef, "conn-ring-ref", r.ConnRingRef, "event-channel", r.EventChannel)
			continue
		}
		if phase == beConnected {
			b.Driver.Changed()
		}
	}
}

// introduced reports whether dom is still known to XenStore (true when
// the question cannot be asked: only dom0 may).
func introduced(c *xs.Client, dom uint32) bool {
	ok, err := c.IsDomainIntroduced(dom)
	return ok || err != nil
}

// IsFault reports whether err is a handshake fault.
func IsFault(err error) bool {
	var f *FaultError
	return errors.As(err, &f)
}

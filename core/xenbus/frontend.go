package xenbus

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/pvusb/pvusb/xs"
)

// FrontendDriver is the device side the frontend machine drives.
type FrontendDriver interface {
	// Probe checks the backend's configuration (xenhcd_probe).
	Probe(cfg BackendConfig) error
	// Connect allocates and grants the two ring pages and allocates an
	// unbound event channel for the backend (xenhcd_connect, first half).
	Connect() (FrontendRings, error)
	// Connected runs after the keys are written and before the state
	// becomes Connected: xen-hcd pre-posts its 512 conn requests here.
	Connected() error
	// Disconnect tears the connection down; at most once per Connect.
	Disconnect()
}

// Frontend is the frontend XenBus machine of one device, xen-hcd's
// sequence (usbif-protocol.md §3.2): read the backend's num-ports and
// usb-ver at probe; when the backend is InitWait, Initialised or
// Connected and we are Initialising, connect, write the three keys in one
// transaction and go straight to Connected; on the backend's Closing (or
// a Closed we missed the Closing of) disconnect and write Closed.
//
// Unlike xen-hcd it can reconnect: with Reconnect set, a Closed frontend
// returns to Initialising, which QEMU answers with a reset.
type Frontend struct {
	C         *xs.Client
	P         Paths // P.Backend is checked against the frontend's backend node
	Driver    FrontendDriver
	Log       *slog.Logger
	Reconnect bool
	// Timeout bounds the wait for the backend to reach InitWait; 0 waits
	// forever. On expiry the device faults.
	Timeout time.Duration
}

// Run drives the device until ctx ends, the frontend dir is removed (nil),
// or it faults (*FaultError, written to error/device/vusb/D/error with the
// state Closing, as xenbus_dev_fatal does).
func (f *Frontend) Run(ctx context.Context) error {
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("backend-dom", f.P.BackDom, "devid", f.P.DevID)
	h := f.C.Handle
	fe := f.P.Frontend
	be, err := h.ReadString(fe + "/backend")
	if err != nil {
		return fault(h, fe, EINVAL, "reading backend path: %v", err)
	}
	if !validBackendPath(be) || (f.P.Backend != "" && be != f.P.Backend) {
		return fault(h, fe, EINVAL, "backend path %q not acceptable", be)
	}
	cfg, err := ReadBackendConfig(h, be)
	if err != nil {
		return fault(h, fe, EINVAL, "%v", err)
	}
	if err := f.Driver.Probe(cfg); err != nil {
		return fault(h, fe, ENODEV, "probe: %v", err)
	}
	ev, err := watchPaths(f.C, be+"/state", fe+"/state")
	if err != nil {
		return err
	}
	defer ev.close()
	connected := false
	disconnect := func() {
		if connected {
			f.Driver.Disconnect()
			connected = false
			log.Info("xenbus frontend: disconnected")
		}
	}
	var timer <-chan time.Time
	if f.Timeout > 0 {
		timer = time.After(f.Timeout)
	}
	for {
		if err := ev.wait(ctx, timer); err != nil {
			if ctx.Err() != nil && connected {
				f.closeGracefully(h, fe, be, log)
			}
			disconnect()
			if ctx.Err() != nil && exists(h, fe+"/state") {
				_ = WriteState(h, fe, Closed) // xenbus_frontend_closed: the backend mirrors it
			}
			if err == errTimeout {
				return fault(h, fe, ETIMEDOUT, "backend did not reach InitWait within %v", f.Timeout)
			}
			return err
		}
		if !exists(h, fe+"/backend") {
			disconnect()
			log.Info("xenbus frontend: device removed")
			return nil
		}
		own, oerr := ReadState(h, fe)
		bst, berr := ReadState(h, be)
		if oerr != nil {
			disconnect()
			return fault(h, fe, EPROTO, "%v", oerr)
		}
		if errors.Is(berr, ErrBadState) {
			disconnect()
			return fault(h, fe, EINVAL, "saw a malformed state at frontend: %v", berr)
		} else if berr != nil {
			return berr
		}
		switch bst {
		case Unknown:
			if connected {
				// The backend vanished. xen-hcd ignores this and its URBs
				// hang; we close so they fail, and may reconnect later.
				disconnect()
				if err := WriteState(h, fe, Closed); err != nil {
					return err
				}
				log.Info("xenbus frontend: backend vanished")
			}
		case Initialising, Reconfiguring, Reconfigured:
			// Nothing to do, unless we are Closed and may come back.
		case InitWait, Initialised, Connected:
			if own != Initialising {
				break
			}
			if connected {
				// Our state was reset under us: the toolstack (or a
				// restarted backend) created the device anew in one
				// transaction. The old connection is gone with it.
				disconnect()
				log.Info("xenbus frontend: device created anew; reconnecting")
			}
			timer = nil
			if err := f.connect(ctx, h, fe); err != nil {
				disconnect()
				return err
			}
			connected = true
			log.Info("xenbus frontend: Connected", "backend-state", bst)
		case Closing, Closed:
			if own != Closed {
				disconnect()
				if err := WriteState(h, fe, Closed); err != nil { // xenbus_frontend_closed
					return err
				}
				log.Info("xenbus frontend: Closed", "backend-state", bst)
				own = Closed
			}
		default:
			disconnect()
			return fault(h, fe, EINVAL, "saw state %d at frontend", int(bst))
		}
		if f.Reconnect && own == Closed && (bst == Closed || bst == Initialising || bst == InitWait) {
			if err := WriteState(h, fe, Initialising); err != nil {
				return err
			}
			log.Info("xenbus frontend: reconnecting")
		}
	}
}

// closeWait bounds how long a frontend that is stopping waits for the
// backend to follow its Closing and release the rings.
const closeWait = 3 * time.Second

// closeGracefully tells the backend we are going (Closing) and waits,
// bounded, until it says it let go of the rings (Closing or Closed, or
// gone), so the grants can be revoked after: ending a grant the backend
// still maps would fail.
func (f *Frontend) closeGracefully(h xs.Handle, fe, be string, log *slog.Logger) {
	if err := WriteState(h, fe, Closing); err != nil {
		return
	}
	deadline := time.Now().Add(closeWait)
	for time.Now().Before(deadline) {
		if st, err := ReadState(h, be); err != nil || st == Closing || st == Closed || st == Unknown {
			return
		}
		time.Sleep(10 * time.Millisecond) // a bounded wait for another domain, not a synchronisation of ours
	}
	log.Warn("xenbus frontend: the backend did not follow our Closing", "after", closeWait)
}

// connect is xenhcd_connect: rings and channel from the driver, the three
// keys in one transaction (retried on conflict), the driver's post-setup,
// then Connected with no Initialised in between.
func (f *Frontend) connect(ctx context.Context, h xs.Handle, fe string) error {
	r, err := f.Driver.Connect()
	if err != nil {
		return fault(h, fe, ENODEV, "connecting: %v", err)
	}
	err = f.C.Transaction(ctx, func(tx xs.Handle) error {
		for _, kv := range [...]struct {
			k string
			v uint32
		}{{"urb-ring-ref", r.URBRingRef}, {"conn-ring-ref", r.ConnRingRef}, {"event-channel", r.EventChannel}} {
			if err := tx.WriteString(fe+"/"+kv.k, uitoa(kv.v)); err != nil {
				return err
			}
		}
		if r.Protocol != "" {
			return tx.WriteString(fe+"/protocol", r.Protocol)
		}
		return nil
	})
	if err != nil {
		f.Driver.Disconnect()
		return fault(h, fe, EINVAL, "writing ring references: %v", err)
	}
	if err := f.Driver.Connected(); err != nil {
		f.Driver.Disconnect()
		return fault(h, fe, ENODEV, "after connect: %v", err)
	}
	return WriteState(h, fe, Connected)
}

func uitoa(v uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

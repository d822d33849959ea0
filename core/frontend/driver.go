package frontend

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
)

// Driver is the frontend's side of the XenBus machine (xenbus.Frontend
// drives it): at probe it learns the backend's configuration, at connect
// it makes a Frontend and starts it, at disconnect it stops and closes it.
// Each connection's Frontend is announced through Connections.
type Driver struct {
	BackDom uint32
	Granter grant.Granter
	Events  evtchn.Channels
	Log     *slog.Logger
	// OnConn receives conn-ring events of the current connection.
	OnConn func(port uint8, speed usbif.Speed)
	// Poll is the Frontend's polling window (Config.Poll).
	Poll time.Duration
	// Connections receives each connected Frontend (buffered by the
	// caller, or read promptly) and the backend's configuration.
	Connections chan<- Connection

	mu     sync.Mutex
	cfg    xenbus.BackendConfig
	f      *Frontend
	cancel context.CancelFunc
	done   chan error
}

// Connection is one connected Frontend and what the backend offers.
type Connection struct {
	F      *Frontend
	Config xenbus.BackendConfig
	// Done receives Run's result when the connection ends.
	Done <-chan error
}

// Probe records num-ports and usb-ver.
func (d *Driver) Probe(cfg xenbus.BackendConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg = cfg
	return nil
}

// Connect grants the rings and bounce pages and binds an event channel.
func (d *Driver) Connect() (xenbus.FrontendRings, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f != nil {
		return xenbus.FrontendRings{}, errors.New("frontend: already connected")
	}
	f, r, err := New(Config{BackDom: d.BackDom, NumPorts: d.cfg.NumPorts, Granter: d.Granter, Events: d.Events, Log: d.Log, OnConn: d.OnConn, Poll: d.Poll})
	if err != nil {
		return r, err
	}
	d.f = f
	return r, nil
}

// Connected starts serving the rings (the credits were pre-posted in New).
func (d *Driver) Connected() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return errors.New("frontend: not connected")
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan error, 1)
	f, done, out := d.f, d.done, make(chan error, 1)
	go func() {
		err := f.Run(ctx)
		done <- err
		out <- err
	}()
	if d.Connections != nil {
		d.Connections <- Connection{F: f, Config: d.cfg, Done: out}
	}
	return nil
}

// Disconnect stops the rings and revokes every grant.
func (d *Driver) Disconnect() {
	d.mu.Lock()
	f, cancel, done := d.f, d.cancel, d.done
	d.f, d.cancel, d.done = nil, nil, nil
	d.mu.Unlock()
	if f == nil {
		return
	}
	if cancel != nil {
		cancel()
		<-done
	}
	if err := f.Close(); err != nil {
		log := d.Log
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		log.Error("frontend: releasing grants", "err", err)
	}
}

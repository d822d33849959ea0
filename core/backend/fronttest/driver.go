package fronttest

import (
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/xenbus"
)

// Driver is a xenbus.FrontendDriver that connects a Front when the
// frontend XenBus machine says so, and hands it over on Fronts.
type Driver struct {
	G       grant.Granter
	Ev      evtchn.Channels
	BackDom uint32
	Fronts  chan *Front // buffered by NewDriver: one Front per connection
	// Check, when set, judges the backend's configuration at probe.
	Check func(xenbus.BackendConfig) error
}

// NewDriver returns a Driver granting through g and signalling through ev.
func NewDriver(g grant.Granter, ev evtchn.Channels, backDom uint32) *Driver {
	return &Driver{G: g, Ev: ev, BackDom: backDom, Fronts: make(chan *Front, 4)}
}

// Probe applies Check, if any.
func (d *Driver) Probe(cfg xenbus.BackendConfig) error {
	if d.Check != nil {
		return d.Check(cfg)
	}
	return nil
}

// Connect builds the Front (rings granted, 512 conn credits posted).
func (d *Driver) Connect() (xenbus.FrontendRings, error) {
	f, r, err := New(d.G, d.Ev, d.BackDom)
	if err == nil {
		d.Fronts <- f
	}
	return r, err
}

// Connected has nothing left to do: New posted the credits.
func (d *Driver) Connected() error { return nil }

// Disconnect leaves the Front to its user.
func (d *Driver) Disconnect() {}

package fronttest

import (
	"context"
	"fmt"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/xs"
)

// WaitCreated waits until the backend has created the controller at p:
// the frontend's backend node exists (the XenBus frontend machine reads
// it first thing).
func WaitCreated(ctx context.Context, c *xs.Client, p xenbus.Paths) error {
	w, err := c.Watch(p.Frontend+"/backend", "fronttest-created")
	if err != nil {
		return fmt.Errorf("watch %s: %w", p.Frontend, err)
	}
	defer w.Unwatch()
	for ok, _ := c.Exists(p.Frontend + "/backend"); !ok; ok, _ = c.Exists(p.Frontend + "/backend") {
		select {
		case <-w.Events:
		case <-ctx.Done():
			return fmt.Errorf("dom%d: the backend never created controller %d", p.FrontDom, p.DevID)
		}
	}
	return nil
}

// Connect is a xen-hcd-style guest on simulated domain d: it waits for
// the backend to create vusb 0, runs the frontend XenBus machine on c
// until ctx ends, and returns the Front once connected. check, if set,
// judges the backend's configuration at probe.
func Connect(ctx context.Context, d *sim.Domain, c *xs.Client, check func(xenbus.BackendConfig) error) (*Front, error) {
	p := xenbus.NewPaths(d.ID, 0, 0, "vusb")
	if err := WaitCreated(ctx, c, p); err != nil {
		return nil, err
	}
	drv := NewDriver(grant.NewSimGranter(d), evtchn.NewSim(d), 0)
	drv.Check = check
	go (&xenbus.Frontend{C: c, P: p, Driver: drv}).Run(ctx)
	select {
	case f := <-drv.Fronts:
		return f, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("dom%d: never connected", d.ID)
	}
}

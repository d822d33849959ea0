// Package enginetest runs our frontend against our backend engine over
// the in-process hypervisor (fronttest.Mem), for the tests of what sits
// on top of a frontend (usbhost, usbip). core/frontend's own tests cannot
// import it (it imports core/frontend) and keep a copy of their own.
package enginetest

import (
	"context"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend"
	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/usbif"
)

// Pair is a frontend and an engine serving it, both running.
type Pair struct {
	F   *frontend.Frontend
	E   *backend.Engine
	Mem *fronttest.Mem
	// Ctx ends when the test does, or after a minute; Cancel ends it
	// sooner.
	Ctx    context.Context
	Cancel context.CancelFunc
	// Conn hears the conn ring's events (plug: a speed; unplug: none).
	Conn chan usbif.ConnResponse
}

// New connects a frontend with ports ports to an engine (as dom 1) and
// runs both until the test ends; then it stops them, waits for them and
// closes the frontend.
func New(tb testing.TB, ports int) *Pair {
	tb.Helper()
	mem := fronttest.NewMem()
	conn := make(chan usbif.ConnResponse, 64) // OnConn must never block the frontend
	f, rings, err := frontend.New(frontend.Config{NumPorts: ports, Granter: mem.Granter(), Events: mem.FrontEvents(),
		OnConn: func(p uint8, s usbif.Speed) { conn <- usbif.ConnResponse{Port: p, Speed: s} }})
	if err != nil {
		tb.Fatal(err)
	}
	e, err := backend.New(backend.Config{Dom: 1, NumPorts: ports, Mapper: mem.Mapper(), Events: mem.BackEvents()}, rings)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	ec, fc := make(chan error, 1), make(chan error, 1)
	go func() { ec <- e.Run(ctx) }()
	go func() { fc <- f.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		<-ec
		<-fc
		f.Close()
	})
	return &Pair{F: f, E: e, Mem: mem, Ctx: ctx, Cancel: cancel, Conn: conn}
}

package usbback

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/xs"
)

// libxlCreate writes a pv controller's nodes as xl's usbctrl-attach
// does (usbif-protocol.md §2.3), in one transaction.
func libxlCreate(t *testing.T, c *xs.Client, p xenbus.Paths, ports int) {
	t.Helper()
	fe := [][2]string{{"backend", p.Backend}, {"backend-id", "0"}, {"state", "1"}}
	be := [][2]string{{"frontend", p.Frontend}, {"frontend-id", strconv.Itoa(int(p.FrontDom))}, {"online", "1"}, {"state", "1"},
		{"type", "pv"}, {"usb-ver", "2"}, {"num-ports", strconv.Itoa(ports)}, {"port", ""}}
	for i := 1; i <= ports; i++ {
		be = append(be, [2]string{fmt.Sprintf("port/%d", i), ""})
	}
	err := c.Transaction(context.Background(), func(tx xs.Handle) error {
		for _, d := range []struct {
			dir   string
			nodes [][2]string
			perms []xs.Perm
		}{
			{p.Frontend, fe, []xs.Perm{{Dom: p.FrontDom, Access: xs.AccessNone}, {Dom: 0, Access: xs.AccessRead}}},
			{p.Backend, be, []xs.Perm{{Dom: 0, Access: xs.AccessNone}, {Dom: p.FrontDom, Access: xs.AccessRead}}},
		} {
			if err := tx.Mkdir(d.dir); err != nil {
				return err
			}
			if err := tx.SetPerms(d.dir, d.perms...); err != nil {
				return err
			}
			for _, kv := range d.nodes {
				if err := tx.WriteString(d.dir+"/"+kv[0], kv[1]); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// xl creates a pv controller for a guest the daemon has never heard of:
// the daemon (adopt = true) serves it, a rule added live fills a port,
// and the toolstack's removal (online 0, state Closing) ends in Closed
// with the controller forgotten. A controller already past Initialising
// (another backend's) is left alone.
func TestAdoptsControllersTheToolstackCreates(t *testing.T) {
	h := simtest.Start(t)
	d0 := simtest.Join(t, h, 0)
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o600)
	cfg, err := rules.Decode(fmt.Sprintf("adopt = true\nrules = [%q]\n", "emu-msc:"+img+":1:0:2"))
	if err != nil {
		t.Fatal(err)
	}
	// Another backend's controller, connected already: not ours to take.
	foreign := xenbus.NewPaths(5, 0, 0, "vusb")
	libxlCreate(t, c0, foreign, 2)
	c0.WriteString(foreign.Backend+"/state", "4")

	s := New(cfg, Platform{XS: c0, Mapper: grant.NewSimMapper(d0), BackDom: 0,
		Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d0), nil }}, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	p := xenbus.NewPaths(1, 0, 0, "vusb")
	libxlCreate(t, c0, p, 4)
	// libxl waits for the pv backend's InitWait.
	w, _ := c0.Watch(p.Backend+"/state", "t-be-state")
	for st, _ := xenbus.ReadState(c0.Handle, p.Backend); st != xenbus.InitWait; st, _ = xenbus.ReadState(c0.Handle, p.Backend) {
		select {
		case <-w.Events:
		case <-ctx.Done():
			t.Fatal("the adopted controller never reached InitWait")
		}
	}
	d1 := simtest.Join(t, h, 1)
	c1, err := xs.Dial(sim.XenStorePath(h.Dir(), 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	front, err := fronttest.Connect(ctx, d1, c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The rule from rules.toml names port 2 of this controller.
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 2 || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("rule for the adopted controller: %+v %v", ev, err)
	}
	if err := s.Add(rules.Rule{Device: "emu-msc:" + img, Dom: 1, VUSB: 0, Port: 4}); err != nil {
		t.Fatal(err)
	}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 4 {
		t.Fatalf("live rule: %+v %v", ev, err)
	}
	if err := s.Add(rules.Rule{Device: "emu-msc:" + img, Dom: 1, VUSB: 0, Port: 5}); err == nil {
		t.Fatal("port 5 of a 4-port controller accepted")
	}
	if s.controller(5, 0) != nil {
		t.Fatal("a controller past Initialising was adopted")
	}
	if st, _ := xenbus.ReadState(c0.Handle, foreign.Backend); st != xenbus.Connected {
		t.Fatalf("the foreign controller was touched: state %v", st)
	}

	// xl usbctrl-detach: online 0 and Closing, wait for Closed, remove.
	c0.Transaction(ctx, func(tx xs.Handle) error {
		tx.WriteString(p.Backend+"/online", "0")
		return tx.WriteString(p.Backend+"/state", "5")
	})
	for st, _ := xenbus.ReadState(c0.Handle, p.Backend); st != xenbus.Closed; st, _ = xenbus.ReadState(c0.Handle, p.Backend) {
		select {
		case <-w.Events:
		case <-ctx.Done():
			t.Fatal("the backend never reached Closed")
		}
	}
	c0.Rm(p.Frontend)
	c0.Rm(p.Backend)
	for i := 0; s.controller(1, 0) != nil; i++ {
		if i > 500 {
			t.Fatal("the removed controller is still served")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, pi := range s.List() {
		if pi.Dom == 1 {
			t.Fatalf("list still shows %+v", pi)
		}
	}
	cancel()
	if err := <-done; err != nil && err != context.Canceled {
		t.Fatal(err)
	}
}

// Package usbfront is the guest-side service of one vusb: it runs the
// XenBus frontend machine (and comes back when the backend restarts),
// drives the connection's rings (core/frontend), emulates the root hub
// (ehci), brings up each device that appears on a port the way Linux's
// hub driver does (reset, enumeration), and exposes it: to the guest
// kernel's vhci-hcd through USB/IP, so the guest's own drivers bind, and
// to USB/IP clients over TCP when exported.
package usbfront

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/ctlsock"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/usbhost"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/usbip"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ehci"
	"github.com/pvusb/pvusb/xs"
)

// Platform is the hypervisor the frontend runs on.
type Platform struct {
	XS      *xs.Client
	Granter grant.Granter
	// Events opens event channels for one connection.
	Events func() (evtchn.Channels, error)
	Dom    uint32 // our domain id
}

// Config is one vusb to drive.
type Config struct {
	BackDom uint32
	DevID   uint32
	// VHCI, when set, gets each device attached (the guest kernel's
	// drivers then bind it); nil leaves the kernel out.
	VHCI *usbip.VHCI
	// Capture, when set, is a directory that receives the first
	// CaptureLimit bytes each way of every vhci-hcd connection
	// (<busid>.cmd, <busid>.ret): what the guest kernel sent, what we
	// answered. The lab keeps them as the tests' captured sequences.
	Capture string
	// Exporter, when set, offers each device to USB/IP clients.
	Exporter *usbip.Exporter
	// OnDevice, when set, hears of each device brought up (ready) or gone
	// (nil), from the service's goroutine: the demo and the tests use it.
	OnDevice func(port uint8, d *usbhost.Device)
	Poll     time.Duration // frontend polling window (frontend.DefaultPoll)
	Log      *slog.Logger
}

// CaptureLimit is how much of each direction Config.Capture keeps: the
// enumeration, the class driver's first commands and the start of the
// data, without filling the guest's disk.
const CaptureLimit = 64 << 10

// Service drives one vusb. Safe for concurrent use.
type Service struct {
	cfg Config
	p   Platform
	log *slog.Logger

	mu   sync.Mutex
	cur  *session // the current connection, nil between connections
	conn *connEvents
}

// New makes the service; Run starts it.
func New(cfg Config, p Platform) *Service {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, p: p, log: cfg.Log.With("devid", cfg.DevID)}
}

// connEvents keeps the conn-ring's news per port until the session takes
// it: the latest speed and a change mark, so nothing the backend says is
// lost before the session starts and nothing piles up while it is busy.
type connEvents struct {
	mu      sync.Mutex
	speed   [usbif.MaxPorts + 1]usbif.Speed
	changed uint32
	wake    chan struct{}
}

func newConnEvents() *connEvents { return &connEvents{wake: make(chan struct{}, 1)} }

// on is frontend.Config.OnConn: it runs under the frontend's lock, so it
// only records and signals.
func (c *connEvents) on(port uint8, speed usbif.Speed) {
	c.mu.Lock()
	c.speed[port] = speed
	c.changed |= 1 << port
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *connEvents) take() (changed uint32, speed [usbif.MaxPorts + 1]usbif.Speed) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed, speed = c.changed, c.speed
	c.changed = 0
	return
}

// Run serves until ctx ends: it waits for the vusb's frontend directory,
// runs the XenBus machine, serves each connection, and starts over when
// the device is removed and comes back (a backend that restarts writes
// the controller anew). On the way out the backend is told (Closing,
// then Closed) before the grants are revoked.
func (s *Service) Run(ctx context.Context) error {
	paths := xenbus.NewPaths(s.p.Dom, s.cfg.BackDom, s.cfg.DevID, "vusb")
	paths.Backend = "" // qusb (QEMU) or vusb (ours, or the kernel's): the frontend's backend node says
	for ctx.Err() == nil {
		if err := s.waitForDevice(ctx, paths.Frontend); err != nil {
			return nil
		}
		s.conn = newConnEvents()
		conns := make(chan frontend.Connection, 1)
		ev, err := s.p.Events()
		if err != nil {
			return err
		}
		drv := &frontend.Driver{BackDom: s.cfg.BackDom, Granter: s.p.Granter, Events: ev, Log: s.log,
			OnConn: s.conn.on, Connections: conns, Poll: s.cfg.Poll}
		m := &xenbus.Frontend{C: s.p.XS, P: paths, Driver: drv, Log: s.log, Reconnect: true}
		mctx, stop := context.WithCancel(ctx)
		merr := make(chan error, 1)
		go func() { merr <- m.Run(mctx) }()
		var ended error
	serve:
		for {
			select {
			case c := <-conns:
				s.serve(mctx, c)
			case ended = <-merr:
				break serve
			}
		}
		stop()
		ev.Close()
		switch {
		case ctx.Err() != nil:
			return nil
		case ended != nil:
			s.log.Error("usbfront: the vusb failed; waiting for it to be created again", "err", ended)
			if err := s.waitForRemoval(ctx, paths.Frontend); err != nil {
				return nil
			}
		default:
			s.log.Info("usbfront: the vusb was removed; waiting for it to come back")
		}
	}
	return nil
}

// waitForDevice waits until the frontend directory exists with its
// backend node (libxl writes both in one transaction).
func (s *Service) waitForDevice(ctx context.Context, fe string) error {
	return s.waitFor(ctx, fe, func() bool { ok, _ := s.p.XS.Exists(fe + "/backend"); return ok })
}

func (s *Service) waitForRemoval(ctx context.Context, fe string) error {
	return s.waitFor(ctx, fe, func() bool { ok, _ := s.p.XS.Exists(fe + "/backend"); return !ok })
}

func (s *Service) waitFor(ctx context.Context, path string, cond func() bool) error {
	w, err := s.p.XS.Watch(path, fmt.Sprintf("usbfront-%p-%d", s, time.Now().UnixNano()))
	if err != nil {
		return err
	}
	defer w.Unwatch()
	for !cond() {
		select {
		case _, ok := <-w.Events:
			if !ok {
				return errors.New("usbfront: XenStore connection lost")
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// session is one connection: the root hub and what is on its ports.
type session struct {
	s     *Service
	f     *frontend.Frontend
	hub   *ehci.Hub
	host  *usbhost.Host
	ports [usbif.MaxPorts + 1]*portDev
}

// portDev is a device brought up on a port.
type portDev struct {
	dev    *usbhost.Device
	busid  string
	vport  int // vhci-hcd port, -1 when not attached
	stop   context.CancelFunc
	served chan struct{}
	err    error // why it could not be brought up
}

// serve runs one connection until it ends.
func (s *Service) serve(ctx context.Context, c frontend.Connection) {
	ss := &session{s: s, f: c.F, hub: ehci.New(c.Config.NumPorts, ehci.RealClock{}), host: &usbhost.Host{F: c.F}}
	s.mu.Lock()
	s.cur = ss
	s.mu.Unlock()
	s.log.Info("usbfront: connected", "ports", c.Config.NumPorts, "usb-ver", c.Config.USBVer)
	// The hub driver powers every port first (hub_power_on).
	for p := 1; p <= c.Config.NumPorts; p++ {
		_ = ss.hub.SetPortFeature(ehci.FeatPower, uint16(p))
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		changed, speed := s.conn.take()
		for p := 1; p <= c.Config.NumPorts; p++ {
			if changed&(1<<p) != 0 {
				ss.hub.Connect(uint8(p), speed[p])
			}
		}
		ss.scan(ctx)
		select {
		case <-s.conn.wake:
		case <-tick.C:
		case <-c.Done:
			ss.teardown()
			return
		case <-ctx.Done():
			ss.teardown()
			<-c.Done
			return
		}
	}
}

// scan handles every port whose connection changed, as hub_events does.
func (ss *session) scan(ctx context.Context) {
	var st [4]byte
	for p := 1; p <= ss.hub.Ports(); p++ {
		if _, err := ss.hub.GetPortStatus(uint16(p), st[:]); err != nil {
			continue
		}
		status := uint32(st[0]) | uint32(st[1])<<8 | uint32(st[2])<<16 | uint32(st[3])<<24
		if status&ehci.ChangeConnection == 0 {
			continue
		}
		ss.gone(uint8(p))
		if status&ehci.PortConnection == 0 {
			_ = ss.hub.ClearPortFeature(ehci.FeatCConnection, uint16(p))
			continue
		}
		ss.bringUp(ctx, uint8(p))
	}
}

// bringUp resets the port, enumerates the device and exposes it.
func (ss *session) bringUp(ctx context.Context, p uint8) {
	log := ss.s.log.With("port", p)
	sleep := func(d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	enabled, speed, err := ss.hub.ResetPort(p, sleep)
	if err != nil || !enabled {
		return
	}
	ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
	d, err := ss.host.Enumerate(ectx, p, speed)
	cancel()
	pd := &portDev{vport: -1}
	ss.ports[p] = pd
	if err != nil {
		pd.err = err
		log.Warn("usbfront: enumeration failed", "err", err)
		return
	}
	pd.dev, pd.busid = d, fmt.Sprintf("%d-%d", ss.s.cfg.DevID, p)
	log.Info("usbfront: device", "vidpid", fmt.Sprintf("%04x:%04x", d.Desc.VID, d.Desc.PID), "product", d.Product, "speed", speed, "address", d.Addr)
	target := usbip.Target{F: ss.f, Port: p, Addr: d.Addr, Types: usbip.EndpointTypes(d.Config)}
	if x := ss.s.cfg.Exporter; x != nil {
		x.Set(usbip.Exported{Dev: usbip.Describe(pd.busid, ss.s.cfg.DevID+1, uint32(d.Addr), speed, d.Desc, d.Config), Target: target})
	}
	if v := ss.s.cfg.VHCI; v != nil {
		devid := (ss.s.cfg.DevID+1)<<16 | uint32(d.Addr)
		ours, vport, err := v.Attach(devid, speed)
		if err != nil {
			log.Warn("usbfront: vhci-hcd attach failed", "err", err)
		} else {
			pd.vport = vport
			sctx, stop := context.WithCancel(context.Background())
			pd.stop, pd.served = stop, make(chan struct{})
			var conn io.ReadWriteCloser = ours
			var tap *usbip.Tap
			if dir := ss.s.cfg.Capture; dir != "" {
				tap = usbip.NewTap(ours, filepath.Join(dir, pd.busid), CaptureLimit)
				conn = tap
			}
			go func() {
				defer close(pd.served)
				if err := usbip.Serve(sctx, conn, target, log); err != nil {
					log.Warn("usbfront: vhci-hcd connection ended", "err", err)
				}
				if tap != nil {
					if err := tap.Save(); err != nil {
						log.Warn("usbfront: capture", "err", err)
					}
				}
			}()
			log.Info("usbfront: attached to vhci-hcd", "vhci-port", vport)
		}
	}
	if ss.s.cfg.OnDevice != nil {
		ss.s.cfg.OnDevice(p, d)
	}
}

// gone takes down what was on a port.
func (ss *session) gone(p uint8) {
	pd := ss.ports[p]
	if pd == nil {
		return
	}
	ss.ports[p] = nil
	if pd.dev == nil {
		return
	}
	if pd.vport >= 0 && ss.s.cfg.VHCI != nil {
		_ = ss.s.cfg.VHCI.Detach(pd.vport)
		pd.stop()
		<-pd.served
	}
	if x := ss.s.cfg.Exporter; x != nil {
		x.Remove(pd.busid)
	}
	ss.host.Release(pd.dev)
	ss.s.log.Info("usbfront: device gone", "port", p)
	if ss.s.cfg.OnDevice != nil {
		ss.s.cfg.OnDevice(p, nil)
	}
}

func (ss *session) teardown() {
	for p := range ss.ports {
		ss.gone(uint8(p))
	}
	ss.s.mu.Lock()
	if ss.s.cur == ss {
		ss.s.cur = nil
	}
	ss.s.mu.Unlock()
}

// PortInfo is one port as `usbfront list` shows it.
type PortInfo struct {
	Port         uint8    `json:"port"`
	Speed        string   `json:"speed,omitempty"`
	Address      uint8    `json:"address,omitempty"`
	VIDPID       string   `json:"vidpid,omitempty"`
	Class        string   `json:"class,omitempty"`
	Manufacturer string   `json:"manufacturer,omitempty"`
	Product      string   `json:"product,omitempty"`
	Serial       string   `json:"serial,omitempty"`
	Interfaces   []string `json:"interfaces,omitempty"`
	Busid        string   `json:"busid,omitempty"`
	VHCIPort     *int     `json:"vhci_port,omitempty"`
	Error        string   `json:"error,omitempty"`
}

// List describes the connected ports.
func (s *Service) List() []PortInfo {
	s.mu.Lock()
	ss := s.cur
	s.mu.Unlock()
	if ss == nil {
		return nil
	}
	var out []PortInfo
	for p := 1; p <= ss.hub.Ports(); p++ {
		pd := ss.ports[p]
		pi := PortInfo{Port: uint8(p)}
		if sp := ss.hub.Speed(uint8(p)); sp != usbif.SpeedNone {
			pi.Speed = sp.String()
		}
		if pd != nil && pd.err != nil {
			pi.Error = pd.err.Error()
		}
		if pd != nil && pd.dev != nil {
			d := pd.dev
			pi.Address, pi.Busid = d.Addr, pd.busid
			pi.VIDPID = fmt.Sprintf("%04x:%04x", d.Desc.VID, d.Desc.PID)
			pi.Class = fmt.Sprintf("%02x/%02x/%02x", d.Desc.Class, d.Desc.SubClass, d.Desc.Protocol)
			pi.Manufacturer, pi.Product, pi.Serial = d.Manufacturer, d.Product, d.Serial
			for _, it := range d.Config.Interfaces {
				if it.Alt == 0 {
					pi.Interfaces = append(pi.Interfaces, fmt.Sprintf("%d: %02x/%02x/%02x, %d endpoints", it.Number, it.Class, it.SubClass, it.Protocol, len(it.Endpoints)))
				}
			}
			if pd.vport >= 0 {
				v := pd.vport
				pi.VHCIPort = &v
			}
		}
		out = append(out, pi)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// Frontend is the current connection's frontend (nil between connections).
func (s *Service) Frontend() *frontend.Frontend {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		return nil
	}
	return s.cur.f
}

// ExportAddr parses --export "tcp:HOST:PORT".
func ExportAddr(spec string) (string, error) {
	addr, ok := strings.CutPrefix(spec, "tcp:")
	if !ok {
		return "", fmt.Errorf("--export %q: want tcp:HOST:PORT (USB/IP's port is 3240)", spec)
	}
	if _, port, err := net.SplitHostPort(addr); err != nil {
		return "", fmt.Errorf("--export %q: %w", spec, err)
	} else if _, err := strconv.Atoi(port); err != nil {
		return "", fmt.Errorf("--export %q: port %q", spec, port)
	}
	return addr, nil
}

// Request is a control-socket request ("list").
type Request struct {
	Op string `json:"op"`
}

// Response answers a Request.
type Response struct {
	Error string          `json:"error,omitempty"`
	Ports []PortInfo      `json:"ports,omitempty"`
	Stats *frontend.Stats `json:"stats,omitempty"`
}

// Serve answers `usbfront list` on the control socket until ctx ends.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	return ctlsock.Serve(ctx, l, func(b []byte) any {
		var req Request
		if err := json.Unmarshal(b, &req); err != nil || req.Op != "list" {
			return Response{Error: "unknown request (list)"}
		}
		rsp := Response{Ports: s.List()}
		if f := s.Frontend(); f != nil {
			st := f.Stats()
			rsp.Stats = &st
		}
		return rsp
	})
}

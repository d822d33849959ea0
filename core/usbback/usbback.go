// Package usbback is the dom0 backend service: for each vusb controller
// of rules.toml it writes the XenStore nodes as libxl does (or adopts a
// controller libxl created), runs the backend XenBus machine, serves the
// connected frontend with a backend.Engine, and keeps the ports filled
// according to the rules and to port/N nodes written by others.
package usbback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/backend"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/acm"
	"github.com/pvusb/pvusb/stub/hid"
	"github.com/pvusb/pvusb/stub/libusb"
	"github.com/pvusb/pvusb/stub/msc"
	"github.com/pvusb/pvusb/stub/null"
	"github.com/pvusb/pvusb/stub/usbfs"
	"github.com/pvusb/pvusb/xs"
)

// Platform is the hypervisor the service runs on: real Xen or the simulator.
type Platform struct {
	XS     *xs.Client
	Mapper grant.Mapper
	// Events opens event channels for one vusb: each engine waits on its own.
	Events  func() (evtchn.Channels, error)
	BackDom uint32 // our domain: 0 in dom0
}

// Devices opens what rules name: emulated devices (emu-KIND:ARG) and
// host devices by busid, and finds host devices by identity.
type Devices interface {
	// Open opens a device; gone, if the device can vanish (a host device
	// being unplugged), is called once when it does.
	Open(device string, gone func()) (stub.Device, error)
	// Find returns the busid of a host device with vid:pid (and serial).
	Find(vid, pid uint16, serial string) (string, error)
}

// HostDevices is Devices on this machine: emulated devices built in,
// host devices through usbfs.
type HostDevices struct {
	Host usbfs.Host
	Log  *slog.Logger
}

// Open opens a device string as a rule or a port/N node names it.
func (h HostDevices) Open(device string, gone func()) (stub.Device, error) {
	r := rules.Rule{Device: device}
	kind, arg, ok := r.Emulated()
	if !ok {
		return h.Host.Open(device, h.Log, gone)
	}
	switch kind {
	case "msc":
		return msc.Open(arg, false)
	case "kbd":
		return hid.Open(hid.Keyboard, arg)
	case "mouse":
		return hid.Open(hid.Mouse, arg)
	case "acm":
		return acm.Open(arg)
	case "null":
		return null.New(), nil
	}
	return nil, fmt.Errorf("device %s: unknown emulated kind %q (emu-msc:IMAGE, emu-kbd:EVENTS, emu-mouse:EVENTS, emu-acm:TTYLINK, emu-null:NAME)", device, kind)
}

// Find looks a host device up by identity: through libusb when this
// binary has it and it works here, else through sysfs.
func (h HostDevices) Find(vid, pid uint16, serial string) (string, error) {
	if devs, err := libusb.List(); err == nil {
		for _, i := range devs {
			if i.Identity.VID == vid && i.Identity.PID == pid && (serial == "" || i.Identity.Serial == serial) && !i.Hub() {
				return i.Busid, nil
			}
		}
		return "", fmt.Errorf("no USB device %04x:%04x (libusb): %w", vid, pid, os.ErrNotExist)
	}
	i, err := h.Host.Find(vid, pid, serial)
	return i.Busid, err
}

// Service serves every controller of a configuration. Safe for
// concurrent use.
type Service struct {
	cfg  *rules.Config
	p    Platform
	log  *slog.Logger
	devs Devices

	mu    sync.Mutex
	ctrls map[[2]uint32]*controller // rules.toml's, and adopted ones while they live

	// Poll is each engine's polling window (backend.Config.Poll); New
	// sets backend.DefaultPoll.
	Poll time.Duration
}

// controller finds a controller by domain and devid.
func (s *Service) controller(dom, devid uint32) *controller {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ctrls[[2]uint32{dom, devid}]
}

// controllers is a snapshot of the controllers.
func (s *Service) controllers() []*controller {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*controller, 0, len(s.ctrls))
	for _, ct := range s.ctrls {
		out = append(out, ct)
	}
	return out
}

func (s *Service) newController(c rules.Controller) *controller {
	ct := &controller{s: s, c: c, paths: xenbus.NewPaths(c.Domid, s.p.BackDom, c.Devid, s.cfg.BackendType),
		rules: map[uint8]rules.Rule{}, gone: map[uint8]bool{}, log: s.log.With("dom", c.Domid, "devid", c.Devid)}
	for _, r := range s.cfg.Parsed {
		if r.Dom == c.Domid && r.VUSB == c.Devid {
			ct.rules[r.Port] = r
		}
	}
	return ct
}

// New builds the service; Run starts it. devs nil means HostDevices on
// this machine's sysfs and usbfs.
func New(cfg *rules.Config, p Platform, devs Devices, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if devs == nil {
		devs = HostDevices{Host: usbfs.DefaultHost, Log: log}
	}
	s := &Service{cfg: cfg, p: p, log: log, devs: devs, ctrls: map[[2]uint32]*controller{}, Poll: backend.DefaultPoll}
	for _, c := range cfg.Controllers {
		s.ctrls[[2]uint32{c.Domid, c.Devid}] = s.newController(c)
	}
	return s
}

// Rescan re-reads every controller's ports: call it when host devices
// come or go, so rules and port/N nodes naming them take effect.
func (s *Service) Rescan() {
	for _, ct := range s.controllers() {
		ct.Changed()
	}
}

// WatchHotplug turns the kernel's USB uevents into rescans until ctx
// ends or next fails.
func (s *Service) WatchHotplug(ctx context.Context, next func(context.Context) (usbfs.Event, error)) error {
	for {
		ev, err := next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if ev.Action == "add" || ev.Action == "remove" {
			s.log.Info("usbback: host device "+ev.Action, "busid", ev.Busid, "product", ev.Product)
			s.Rescan()
		}
	}
}

// Run serves until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, ct := range s.controllers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ct.run(ctx)
		}()
	}
	var err error
	if s.cfg.Adopt {
		err = s.adopt(ctx, &wg)
	}
	wg.Wait()
	if err != nil {
		return err
	}
	return ctx.Err()
}

// adopt serves the controllers the toolstack creates (xl's usbctrl =
// ["type=pv,…"], or a libxl-style writer): it watches our backend class
// directory and starts a controller for each new device whose backend
// state is Initialising, as libxl leaves it; one already past that
// belongs to another backend (or an earlier life) and is left alone.
func (s *Service) adopt(ctx context.Context, wg *sync.WaitGroup) error {
	base := fmt.Sprintf("/local/domain/%d/backend/%s", s.p.BackDom, s.cfg.BackendType)
	w, err := s.p.XS.Watch(base, "usbback-adopt")
	if err != nil {
		return fmt.Errorf("watch %s: %w", base, err)
	}
	defer w.Unwatch()
	s.log.Info("usbback: adopting controllers the toolstack creates", "dir", base)
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("watch %s ended", base)
			}
		}
		for _, ct := range s.discover(base) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ct.run(ctx)
				s.mu.Lock()
				if s.ctrls[[2]uint32{ct.c.Domid, ct.c.Devid}] == ct {
					delete(s.ctrls, [2]uint32{ct.c.Domid, ct.c.Devid})
				}
				s.mu.Unlock()
				ct.log.Info("usbback: adopted controller gone")
			}()
		}
	}
}

// discover lists base/F/D and returns new controllers to serve. Every
// value is read once and checked: the guest can write none of these
// nodes, but a half-written or foreign directory must not fault.
func (s *Service) discover(base string) []*controller {
	h := s.p.XS.Handle
	doms, _ := h.Directory(base)
	var out []*controller
	for _, fs := range doms {
		f, err := strconv.ParseUint(fs, 10, 16)
		if err != nil || f == 0 {
			continue
		}
		devs, _ := h.Directory(base + "/" + fs)
		for _, ds := range devs {
			d, err := strconv.ParseUint(ds, 10, 32)
			if err != nil || s.controller(uint32(f), uint32(d)) != nil {
				continue
			}
			dir := base + "/" + fs + "/" + ds
			if st, err := xenbus.ReadState(h, dir); err != nil || st != xenbus.Initialising {
				continue
			}
			cfg, err := xenbus.ReadBackendConfig(h, dir)
			if err != nil {
				continue // not complete yet: the next event looks again
			}
			ct := s.newController(rules.Controller{Domid: uint32(f), Devid: uint32(d), Ports: cfg.NumPorts, USBVer: cfg.USBVer})
			ct.adopted = true
			s.mu.Lock()
			if s.ctrls[[2]uint32{ct.c.Domid, ct.c.Devid}] == nil {
				s.ctrls[[2]uint32{ct.c.Domid, ct.c.Devid}] = ct
				out = append(out, ct)
				ct.log.Info("usbback: adopting a controller the toolstack created", "ports", cfg.NumPorts, "usb-ver", cfg.USBVer)
			}
			s.mu.Unlock()
		}
	}
	return out
}

// controller is one vusb: its XenBus machine and, while connected, its engine.
type controller struct {
	s     *Service
	c     rules.Controller
	paths xenbus.Paths
	log   *slog.Logger

	mu     sync.Mutex
	rules  map[uint8]rules.Rule // port -> rule
	eng    *backend.Engine
	cancel context.CancelFunc
	done   chan struct{}
	ev     evtchn.Channels
	cfg    xenbus.BackendConfig
	ports  map[uint8]string // what is plugged: port -> device string
	gone   map[uint8]bool   // plugged host devices that were unplugged from the host
	// adopted: created by the toolstack, served while it lives.
	adopted bool
}

func (ct *controller) run(ctx context.Context) {
	for ctx.Err() == nil {
		if ct.c.Create {
			if err := ct.create(ctx); err != nil {
				ct.log.Error("usbback: creating the controller's XenStore nodes", "err", err)
				return
			}
		}
		b := &xenbus.Backend{C: ct.s.p.XS, P: ct.paths, Driver: ct, Log: ct.s.log, // it adds dom and devid itself
			CloseTimeout: closeTimeout}
		err := b.Run(ctx)
		ct.Disconnect()
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			ct.log.Info("usbback: controller removed")
			if !ct.c.Create {
				return // libxl removed it; it will create it again
			}
		case ct.adopted:
			ct.log.Error("usbback: controller failed", "err", err)
			return
		default:
			ct.log.Error("usbback: controller failed", "err", err)
			return
		}
	}
}

// create writes the controller's nodes in one transaction, as libxl's
// usbctrl-attach does (usbif-protocol.md §2.3), with its permissions:
// the frontend dir owned by the guest and readable by us, the backend
// dir ours and readable by the guest.
func (ct *controller) create(ctx context.Context) error {
	fe, be, f, b := ct.paths.Frontend, ct.paths.Backend, ct.c.Domid, ct.s.p.BackDom
	feNodes := [][2]string{{"backend", be}, {"backend-id", u(b)}, {"state", "1"}}
	beNodes := [][2]string{{"frontend", fe}, {"frontend-id", u(f)}, {"online", "1"}, {"state", "1"},
		{"type", ct.s.cfg.BackendType}, {"usb-ver", strconv.Itoa(ct.c.USBVer)}, {"num-ports", strconv.Itoa(ct.c.Ports)}, {"port", ""}}
	for p := 1; p <= ct.c.Ports; p++ {
		beNodes = append(beNodes, [2]string{"port/" + strconv.Itoa(p), ""})
	}
	fePerms := []xs.Perm{{Dom: f, Access: xs.AccessNone}, {Dom: b, Access: xs.AccessRead}}
	bePerms := []xs.Perm{{Dom: b, Access: xs.AccessNone}, {Dom: f, Access: xs.AccessRead}}
	return ct.s.p.XS.Transaction(ctx, func(tx xs.Handle) error {
		if err := tx.Rm(fe); err != nil && !errors.Is(err, xs.ENOENT) {
			return err
		}
		if err := tx.Rm(be); err != nil && !errors.Is(err, xs.ENOENT) {
			return err
		}
		for _, d := range []struct {
			dir   string
			nodes [][2]string
			perms []xs.Perm
		}{{fe, feNodes, fePerms}, {be, beNodes, bePerms}} {
			if err := tx.Mkdir(d.dir); err != nil {
				return err
			}
			if err := tx.SetPerms(d.dir, d.perms...); err != nil {
				return err
			}
			for _, kv := range d.nodes {
				p := d.dir + "/" + kv[0]
				if err := tx.WriteString(p, kv[1]); err != nil {
					return err
				}
				if err := tx.SetPerms(p, d.perms...); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// closeTimeout is how long a controller the toolstack removes waits for
// the frontend to close before writing Closed itself (a destroyed guest
// never answers; libxl gives a pv backend about 10 s).
const closeTimeout = 3 * time.Second

func u(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// Init is the XenBus Init step: the configuration libxl (or we) wrote.
func (ct *controller) Init(cfg xenbus.BackendConfig) error {
	ct.mu.Lock()
	ct.cfg = cfg
	ct.mu.Unlock()
	return nil
}

// Connect starts an engine on the frontend's rings and fills the ports.
func (ct *controller) Connect(r xenbus.FrontendRings) error {
	ev, err := ct.s.p.Events()
	if err != nil {
		return err
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	eng, err := backend.New(backend.Config{Dom: ct.c.Domid, DevID: ct.c.Devid, NumPorts: ct.cfg.NumPorts,
		Mapper: ct.s.p.Mapper, Events: ev, Log: ct.s.log, Poll: ct.s.Poll}, r) // the engine adds dom and devid
	if err != nil {
		ev.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	ct.eng, ct.cancel, ct.done, ct.ev, ct.ports = eng, cancel, make(chan struct{}), ev, map[uint8]string{}
	go func() {
		defer close(ct.done)
		if err := eng.Run(ctx); err != nil && ctx.Err() == nil {
			// The frontend broke the ring: quarantine this vusb only.
			ct.log.Error("usbback: closing the vusb", "err", err)
			_ = xenbus.Fatal(ct.s.p.XS.Handle, ct.paths.Backend, xenbus.EPROTO, "%v", err)
		}
	}()
	ct.syncPortsLocked()
	return nil
}

// Disconnect stops the engine (it closes the devices and unmaps).
func (ct *controller) Disconnect() {
	ct.mu.Lock()
	cancel, done, ev := ct.cancel, ct.done, ct.ev
	ct.eng, ct.cancel, ct.done, ct.ev = nil, nil, nil, nil
	ct.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
		ev.Close()
	}
}

// Changed re-reads port/N: nodes written by others (libxl) are honoured.
func (ct *controller) Changed() {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	ct.syncPortsLocked()
}

// syncPortsLocked makes the engine's ports match the rules and the port/N
// nodes: a rule wins over an empty node; a node naming a device adds it.
// A rule matching by VID:PID is resolved to the busid it finds now, and
// the node follows it. A host device that left the host is unplugged;
// its node stays, so the device comes back to the same port.
func (ct *controller) syncPortsLocked() {
	if ct.eng == nil {
		return
	}
	h := ct.s.p.XS.Handle
	for p := uint8(1); int(p) <= ct.cfg.NumPorts; p++ {
		node := ct.paths.Backend + "/port/" + strconv.Itoa(int(p))
		want, _ := h.ReadString(node)
		if r, ok := ct.rules[p]; ok && (want == "" || r.Device == "") {
			dev := r.Device
			if dev == "" {
				busid, err := ct.s.devs.Find(r.VID, r.PID, r.Serial)
				if err != nil {
					ct.log.Debug("usbback: no host device matches yet", "rule", r.String(), "err", err)
				}
				dev = busid
			}
			if dev != want {
				want = dev
				_ = h.WriteString(node, want) // as libxl records an assignment
			}
		}
		have := ct.ports[p]
		if ct.gone[p] {
			have = "" // unplugged below; plugged again when it is back
		}
		if want == have {
			continue
		}
		if ct.ports[p] != "" {
			if err := ct.eng.Unplug(p); err != nil {
				ct.log.Warn("usbback: unplug", "port", p, "err", err)
			}
			delete(ct.ports, p)
			delete(ct.gone, p)
		}
		if want == "" {
			continue
		}
		if _, err := rules.Parse(want + ":" + ct.paths.Key(p)); err != nil {
			ct.log.Warn("usbback: port node names no device we know", "port", p, "value", want, "err", err)
			continue
		}
		port := p
		dev, err := ct.s.devs.Open(want, func() { ct.hostGone(port) })
		if err != nil {
			ct.log.Info("usbback: device not available; the port stays empty until it is", "port", p, "device", want, "err", err)
			continue
		}
		if err := ct.eng.Plug(p, dev); err != nil {
			dev.Close()
			ct.log.Warn("usbback: plug", "port", p, "err", err)
			continue
		}
		ct.ports[p] = want
	}
}

// hostGone is a plugged host device leaving the host: the port is
// emptied (in-flight URBs answered, then the speed-0 event).
func (ct *controller) hostGone(port uint8) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if ct.ports[port] == "" {
		return
	}
	ct.gone[port] = true
	ct.syncPortsLocked()
}

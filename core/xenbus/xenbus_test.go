package xenbus

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvusb/pvusb/xs"
)

type world struct {
	s      *xs.Server
	c0, c1 *xs.Client // dom0 (backend, toolstack), dom1 (frontend)
	p      Paths
	ctx    context.Context
}

func newWorld(t *testing.T) *world {
	t.Helper()
	s := xs.NewServer(nil, xs.DefaultQuotas)
	s.IntroduceDomain(1)
	conn := func(dom uint32) *xs.Client {
		a, b := net.Pipe()
		go s.ServeConn(a, dom)
		c := xs.NewClient(b)
		t.Cleanup(func() { c.Close() })
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return &world{s: s, c0: conn(0), c1: conn(1), p: NewPaths(1, 0, 0, "vusb"), ctx: ctx}
}

// libxlCreate writes a controller as `xl usbctrl-attach` does: both dirs
// in one transaction, with libxl's permissions.
func (w *world) libxlCreate(t *testing.T, numPorts, usbVer string) {
	t.Helper()
	fe, be := w.p.Frontend, w.p.Backend
	err := w.c0.Transaction(w.ctx, func(tx xs.Handle) error {
		for k, v := range map[string]string{fe + "/backend": be, fe + "/backend-id": "0", fe + "/state": "1",
			be + "/frontend": fe, be + "/frontend-id": "1", be + "/online": "1", be + "/state": "1", be + "/type": "pv",
			be + "/usb-ver": usbVer, be + "/num-ports": numPorts, be + "/port/1": "", be + "/port/2": ""} {
			if err := tx.WriteString(k, v); err != nil {
				return err
			}
		}
		for _, d := range []struct {
			dir   string
			perms []xs.Perm
		}{{fe, []xs.Perm{{Dom: 1, Access: xs.AccessNone}, {Dom: 0, Access: xs.AccessRead}}},
			{be, []xs.Perm{{Dom: 0, Access: xs.AccessNone}, {Dom: 1, Access: xs.AccessRead}}}} {
			for _, n := range []string{"", "/state", "/backend", "/backend-id", "/frontend", "/frontend-id", "/online", "/type", "/usb-ver", "/num-ports", "/port", "/port/1", "/port/2"} {
				if ok, _ := tx.Exists(d.dir + n); ok {
					if err := tx.SetPerms(d.dir+n, d.perms...); err != nil {
						return err
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitValue waits until path holds want, driven by a watch (no sleeps).
func (w *world) waitValue(t *testing.T, c *xs.Client, path, want string) {
	t.Helper()
	wt, err := c.Watch(path, "wait-"+path+"-"+want)
	if err != nil {
		t.Fatal(err)
	}
	defer wt.Unwatch()
	for {
		if v, _ := c.ReadString(path); v == want {
			return
		}
		select {
		case <-wt.Events:
		case <-w.ctx.Done():
			v, _ := c.ReadString(path)
			t.Fatalf("%s is %q, waited for %q", path, v, want)
		}
	}
}

type recorder struct {
	mu    sync.Mutex
	calls []string
	cfg   BackendConfig
	rings FrontendRings
	fail  string // name of a call that fails
}

func (r *recorder) add(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, s)
	if s == r.fail {
		return errors.New(s + " failed")
	}
	return nil
}

func (r *recorder) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c == s {
			n++
		}
	}
	return n
}

func (r *recorder) Init(cfg BackendConfig) error   { r.cfg = cfg; return r.add("init") }
func (r *recorder) Connect(fr FrontendRings) error { r.rings = fr; return r.add("connect") }
func (r *recorder) Disconnect()                    { r.add("disconnect") }
func (r *recorder) Changed()                       { r.add("changed") }
func (r *recorder) Probe(cfg BackendConfig) error  { r.cfg = cfg; return r.add("probe") }
func (r *recorder) Connected() error               { return r.add("connected") }
func (r *recorder) ConnectFE() (FrontendRings, error) {
	return FrontendRings{URBRingRef: 8, ConnRingRef: 9, EventChannel: 5}, r.add("connect")
}

type feDriver struct{ *recorder }

func (f feDriver) Connect() (FrontendRings, error) { return f.ConnectFE() }

func (w *world) runBackend(t *testing.T, drv BackendDriver, timeout time.Duration) chan error {
	b := &Backend{C: w.c0, P: w.p, Driver: drv, Timeout: timeout}
	errc := make(chan error, 1)
	go func() { errc <- b.Run(w.ctx) }()
	return errc
}

func (w *world) result(t *testing.T, errc chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-w.ctx.Done():
		t.Fatal("machine did not stop")
	}
	return nil
}

// TestBackendServesXenHCDSequence replays what Linux xen-hcd does, step
// by step, against the backend machine.
func TestBackendServesXenHCDSequence(t *testing.T) {
	w := newWorld(t)
	w.libxlCreate(t, "8", "2")
	rec := &recorder{}
	errc := w.runBackend(t, rec, 0)
	be, fe := w.p.Backend, w.p.Frontend

	w.waitValue(t, w.c1, be+"/state", "2")
	if v, _ := w.c0.ReadString(be + "/hotplug-status"); v != "connected" || rec.cfg != (BackendConfig{8, 2}) {
		t.Fatalf("hotplug-status %q, config %+v", v, rec.cfg)
	}
	// xen-hcd: the three keys in one transaction, then 1 -> 4 directly.
	w.c1.Transaction(w.ctx, func(tx xs.Handle) error {
		tx.WriteString(fe+"/urb-ring-ref", "768")
		tx.WriteString(fe+"/conn-ring-ref", "769")
		return tx.WriteString(fe+"/event-channel", "17")
	})
	WriteState(w.c1.Handle, fe, Connected)
	w.waitValue(t, w.c1, be+"/state", "4")
	if rec.rings != (FrontendRings{URBRingRef: 768, ConnRingRef: 769, EventChannel: 17}) {
		t.Errorf("rings %+v", rec.rings)
	}
	// Hot-plug: libxl writes a busid into port/1.
	w.c0.WriteString(be+"/port/1", "1-2.3")
	for rec.count("changed") == 0 {
		w.waitValue(t, w.c1, be+"/state", "4") // a round trip; Changed runs on the event
	}
	// The frontend goes Closing, then Closed: the backend mirrors.
	WriteState(w.c1.Handle, fe, Closing)
	w.waitValue(t, w.c1, be+"/state", "5")
	WriteState(w.c1.Handle, fe, Closed)
	w.waitValue(t, w.c1, be+"/state", "6")
	if rec.count("disconnect") != 1 {
		t.Errorf("disconnects %d", rec.count("disconnect"))
	}
	// Reconnect: a Closed frontend back at Initialising resets the backend.
	WriteState(w.c1.Handle, fe, Initialising)
	w.waitValue(t, w.c1, be+"/state", "2")
	if rec.count("init") != 2 {
		t.Errorf("inits %d", rec.count("init"))
	}
	WriteState(w.c1.Handle, fe, Connected)
	w.waitValue(t, w.c1, be+"/state", "4")
	// Toolstack removal: online=0, state 5; the frontend closes; the dirs go.
	w.c0.Transaction(w.ctx, func(tx xs.Handle) error {
		tx.WriteString(be+"/online", "0")
		return WriteState(tx, be, Closing)
	})
	WriteState(w.c1.Handle, fe, Closed)
	w.waitValue(t, w.c1, be+"/state", "6")
	w.c0.Rm(be)
	w.c0.Rm(fe)
	if err := w.result(t, errc); err != nil {
		t.Fatalf("run after removal: %v", err)
	}
	if rec.count("disconnect") != 2 || rec.count("connect") != 2 {
		t.Errorf("calls %v", rec.calls)
	}
}

// xl destroy: the guest is gone and its frontend never answers the
// toolstack's Closing; the backend writes Closed itself after
// CloseTimeout, before libxl's own ~10 s timeout forces an error.
func TestBackendClosesForTheToolstackWhenTheFrontendIsDead(t *testing.T) {
	w := newWorld(t)
	w.libxlCreate(t, "4", "2")
	rec := &recorder{}
	b := &Backend{C: w.c0, P: w.p, Driver: rec, CloseTimeout: 100 * time.Millisecond}
	errc := make(chan error, 1)
	go func() { errc <- b.Run(w.ctx) }()
	be, fe := w.p.Backend, w.p.Frontend
	w.waitValue(t, w.c1, be+"/state", "2")
	w.c1.Transaction(w.ctx, func(tx xs.Handle) error {
		tx.WriteString(fe+"/urb-ring-ref", "1")
		tx.WriteString(fe+"/conn-ring-ref", "2")
		return tx.WriteString(fe+"/event-channel", "3")
	})
	WriteState(w.c1.Handle, fe, Connected)
	w.waitValue(t, w.c1, be+"/state", "4")
	w.c0.Transaction(w.ctx, func(tx xs.Handle) error {
		tx.WriteString(be+"/online", "0")
		return WriteState(tx, be, Closing)
	})
	// The frontend stays Connected: its domain is being destroyed.
	w.waitValue(t, w.c0, be+"/state", "6")
	if v, _ := w.c0.ReadString(fe + "/state"); v != "4" {
		t.Fatalf("frontend state %q: the backend must not write the guest's nodes", v)
	}
	if rec.count("disconnect") != 1 {
		t.Errorf("calls %v", rec.calls)
	}
	w.c0.Rm(be)
	w.c0.Rm(fe)
	if err := w.result(t, errc); err != nil {
		t.Fatal(err)
	}
}

func TestBackendAgainstHostileFrontends(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ports    string
		feScript func(w *world)
		errno    int
		msg      string
		timeout  time.Duration
	}{
		{"num-ports 0", "0", nil, EINVAL, "num-ports", 0},
		{"num-ports 99", "99", nil, EINVAL, "num-ports", 0},
		{"state jump to 9", "8", func(w *world) { w.c1.WriteString(w.p.Frontend+"/state", "9") }, EPROTO, "malformed state", 0},
		{"state not a number", "8", func(w *world) { w.c1.WriteString(w.p.Frontend+"/state", "four") }, EPROTO, "malformed state", 0},
		{"connected without ring refs", "8", func(w *world) { WriteState(w.c1.Handle, w.p.Frontend, Connected) }, EINVAL, "urb-ring-ref", 0},
		{"ring ref not a number", "8", func(w *world) {
			w.c1.WriteString(w.p.Frontend+"/urb-ring-ref", "0x10")
			w.c1.WriteString(w.p.Frontend+"/conn-ring-ref", "1")
			w.c1.WriteString(w.p.Frontend+"/event-channel", "1")
			WriteState(w.c1.Handle, w.p.Frontend, Initialised)
		}, EINVAL, "urb-ring-ref", 0},
		{"event channel beyond u32", "8", func(w *world) {
			w.c1.WriteString(w.p.Frontend+"/urb-ring-ref", "1")
			w.c1.WriteString(w.p.Frontend+"/conn-ring-ref", "1")
			w.c1.WriteString(w.p.Frontend+"/event-channel", "4294967296")
			WriteState(w.c1.Handle, w.p.Frontend, Connected)
		}, EINVAL, "event-channel", 0},
		{"frontend never answers", "8", func(w *world) {}, ETIMEDOUT, "did not connect", 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.libxlCreate(t, tc.ports, "2")
			errc := w.runBackend(t, &recorder{}, tc.timeout)
			if tc.feScript != nil {
				w.waitValue(t, w.c1, w.p.Backend+"/state", "2")
				tc.feScript(w)
			}
			err := w.result(t, errc)
			var f *FaultError
			if !errors.As(err, &f) || f.Errno != tc.errno || !strings.Contains(f.Msg, tc.msg) {
				t.Fatalf("got %v, want errno %d about %q", err, tc.errno, tc.msg)
			}
			if st, _ := ReadState(w.c0.Handle, w.p.Backend); st != Closing {
				t.Errorf("state after fault %v", st)
			}
			v, _ := w.c0.ReadString("/local/domain/0/error/backend/vusb/1/0/error")
			if !strings.HasPrefix(v, itoa(tc.errno)+" ") {
				t.Errorf("error node %q", v)
			}
		})
	}
	t.Run("wrong frontend path", func(t *testing.T) {
		w := newWorld(t)
		w.libxlCreate(t, "8", "2")
		w.c0.WriteString(w.p.Backend+"/frontend", "/local/domain/2/device/vusb/0")
		err := w.result(t, w.runBackend(t, &recorder{}, 0))
		if !IsFault(err) || !strings.Contains(err.Error(), "frontend path") {
			t.Fatal(err)
		}
	})
	t.Run("initial state not Initialising", func(t *testing.T) {
		w := newWorld(t)
		w.libxlCreate(t, "8", "2")
		WriteState(w.c0.Handle, w.p.Backend, Connected)
		if err := w.result(t, w.runBackend(t, &recorder{}, 0)); !IsFault(err) {
			t.Fatal(err)
		}
	})
	t.Run("nodes rewritten mid-connection", func(t *testing.T) {
		w := newWorld(t)
		w.libxlCreate(t, "8", "2")
		rec := &recorder{}
		errc := w.runBackend(t, rec, 0)
		w.waitValue(t, w.c1, w.p.Backend+"/state", "2")
		for _, k := range []string{"urb-ring-ref", "conn-ring-ref", "event-channel"} {
			w.c1.WriteString(w.p.Frontend+"/"+k, "3")
		}
		WriteState(w.c1.Handle, w.p.Frontend, Connected)
		w.waitValue(t, w.c0, w.p.Backend+"/state", "4")
		// Ring references are read once, at connect: rewriting them later
		// changes nothing (no reconnect, no second Connect).
		w.c1.WriteString(w.p.Frontend+"/urb-ring-ref", "not a number")
		w.c1.WriteString(w.p.Frontend+"/event-channel", "99999999999")
		// A later change the backend acts on (a port node) proves it has
		// looked at the world after the rewrite: the machine re-reads
		// everything on each event.
		w.c0.WriteString(w.p.Backend+"/port/1", "1-1")
		for rec.count("changed") == 0 {
			if w.ctx.Err() != nil {
				t.Fatal("the backend never saw the port change")
			}
			w.waitValue(t, w.c0, w.p.Backend+"/state", "4")
		}
		if rec.count("connect") != 1 || rec.count("disconnect") != 0 {
			t.Fatalf("rewritten refs acted on: %v", rec.calls)
		}
		// A garbage state faults the device, after disconnecting it.
		w.c1.WriteString(w.p.Frontend+"/state", "Connected")
		err := w.result(t, errc)
		if !IsFault(err) || rec.count("disconnect") != 1 {
			t.Fatalf("garbage state mid-connection: %v, calls %v", err, rec.calls)
		}
		if st, _ := ReadState(w.c0.Handle, w.p.Backend); st != Closing {
			t.Errorf("state %v", st)
		}
	})
	t.Run("frontend vanishes", func(t *testing.T) {
		w := newWorld(t)
		w.libxlCreate(t, "8", "2")
		rec := &recorder{}
		w.runBackend(t, rec, 0)
		w.waitValue(t, w.c1, w.p.Backend+"/state", "2")
		for _, k := range []string{"urb-ring-ref", "conn-ring-ref", "event-channel"} {
			w.c1.WriteString(w.p.Frontend+"/"+k, "3")
		}
		WriteState(w.c1.Handle, w.p.Frontend, Connected)
		w.waitValue(t, w.c0, w.p.Backend+"/state", "4")
		w.c0.Rm(w.p.Frontend)
		w.waitValue(t, w.c0, w.p.Backend+"/state", "6")
		if rec.count("disconnect") != 1 {
			t.Error("not disconnected")
		}
	})
}

func itoa(v int) string { return uitoa(uint32(v)) }

func (w *world) runFrontend(t *testing.T, drv FrontendDriver, reconnect bool, timeout time.Duration) chan error {
	f := &Frontend{C: w.c1, P: w.p, Driver: drv, Reconnect: reconnect, Timeout: timeout}
	errc := make(chan error, 1)
	go func() { errc <- f.Run(w.ctx) }()
	return errc
}

// TestFrontendAgainstQEMUSequence replays QEMU's backend step by step.
func TestFrontendAgainstQEMUSequence(t *testing.T) {
	w := newWorld(t)
	w.libxlCreate(t, "4", "2")
	rec := &recorder{}
	errc := w.runFrontend(t, feDriver{rec}, true, 0)
	be, fe := w.p.Backend, w.p.Frontend
	// Record every frontend state the machine writes.
	sw, _ := w.c0.Watch(fe+"/state", "fe-states")
	var states []string
	collect := func(want string) {
		t.Helper()
		for {
			select {
			case <-sw.Events:
				v, _ := w.c0.ReadString(fe + "/state")
				if len(states) == 0 || states[len(states)-1] != v {
					states = append(states, v)
				}
				if v == want {
					return
				}
			case <-w.ctx.Done():
				t.Fatalf("frontend states %v, waited for %s", states, want)
			}
		}
	}
	collect("1")
	// QEMU: online=1 -> init -> hotplug-status, InitWait.
	w.c0.WriteString(be+"/hotplug-status", "connected")
	WriteState(w.c0.Handle, be, InitWait)
	collect("4")
	if strings.Contains(strings.Join(states, ","), "3") {
		t.Errorf("xen-hcd goes 1 -> 4 directly; states %v", states)
	}
	d := xs.NewDecoder(w.c0.Handle, fe)
	if d.Uint("urb-ring-ref", 0, 1<<32-1) != 8 || d.Uint("conn-ring-ref", 0, 1<<32-1) != 9 || d.Uint("event-channel", 0, 1<<32-1) != 5 || d.Err() != nil {
		t.Errorf("ring keys: %v", d.Err())
	}
	if rec.cfg != (BackendConfig{4, 2}) || strings.Join(rec.calls, ",") != "probe,connect,connected" {
		t.Errorf("calls %v cfg %+v", rec.calls, rec.cfg)
	}
	WriteState(w.c0.Handle, be, Connected)
	// The toolstack closes the backend: the frontend disconnects, Closed.
	WriteState(w.c0.Handle, be, Closing)
	collect("6")
	// QEMU mirrors Closed; our frontend reconnects: 6 -> 1, QEMU resets.
	WriteState(w.c0.Handle, be, Closed)
	collect("1")
	WriteState(w.c0.Handle, be, Initialising)
	WriteState(w.c0.Handle, be, InitWait)
	collect("4")
	if rec.count("connect") != 2 || rec.count("disconnect") != 1 {
		t.Errorf("calls %v", rec.calls)
	}
	// The backend vanishes while connected: the frontend closes.
	w.c0.Rm(be)
	collect("6")
	w.c0.Rm(fe)
	if err := w.result(t, errc); err != nil {
		t.Fatalf("after removal: %v", err)
	}
}

func TestFrontendAgainstHostileBackends(t *testing.T) {
	for _, tc := range []struct {
		name, ports, ver string
		beScript         func(w *world)
		errno            int
		msg              string
		timeout          time.Duration
	}{
		{"num-ports 99", "99", "2", nil, EINVAL, "num-ports", 0},
		{"usb-ver 3", "8", "3", nil, EINVAL, "usb-ver", 0},
		{"num-ports missing", "", "2", nil, EINVAL, "num-ports", 0},
		{"state 9", "8", "2", func(w *world) { w.c0.WriteString(w.p.Backend+"/state", "9") }, EINVAL, "malformed state", 0},
		{"never InitWait", "8", "2", func(w *world) {}, ETIMEDOUT, "InitWait", 50 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.libxlCreate(t, tc.ports, tc.ver)
			if tc.ports == "" {
				w.c0.Rm(w.p.Backend + "/num-ports")
			}
			errc := w.runFrontend(t, feDriver{&recorder{}}, false, tc.timeout)
			if tc.beScript != nil {
				tc.beScript(w)
			}
			err := w.result(t, errc)
			var f *FaultError
			if !errors.As(err, &f) || f.Errno != tc.errno || !strings.Contains(f.Msg, tc.msg) {
				t.Fatalf("got %v, want errno %d about %q", err, tc.errno, tc.msg)
			}
			if st, _ := ReadState(w.c1.Handle, w.p.Frontend); st != Closing {
				t.Errorf("state %v", st)
			}
			if v, _ := w.c1.ReadString("/local/domain/1/error/device/vusb/0/error"); !strings.HasPrefix(v, itoa(tc.errno)+" ") {
				t.Errorf("error node %q", v)
			}
		})
	}
}

func TestStateAndErrorPath(t *testing.T) {
	if Connected.String() != "Connected" || State(9).String() != "State(9)" {
		t.Error("names")
	}
	if p := errorPath("/local/domain/1/device/vusb/0"); p != "/local/domain/1/error/device/vusb/0/error" {
		t.Error(p)
	}
	if !validBackendPath("/local/domain/0/backend/qusb/1/0") || validBackendPath("/local/domain/0/backend/qusb/1") || validBackendPath("/etc/x/y/z/w/v/u") {
		t.Error("backend path check")
	}
}

// Package backend is the engine that serves one vusb: it consumes the urb
// ring (copy once, validate, move the data with grant copies in one batch,
// dispatch to the device on the addressed port, respond exactly once per
// request), runs the conn ring (hot-plug events), and emulates what QEMU's
// xen-usb backend does locally: the address table and the intercepted
// control requests of usbif-protocol.md §8.2.2.
//
// The frontend is hostile: every request is copied out of the shared page
// once and validated before use; a ring-level violation latches an error,
// is logged once, and ends Run so the caller can move this vusb (and only
// it) to Closing.
package backend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/stub"
)

type (
	urbBack  = ring.Back[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte]
	connBack = ring.Back[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte]
)

// Config is one vusb to serve.
type Config struct {
	Dom, DevID uint32
	NumPorts   int // 1..31
	Mapper     grant.Mapper
	Events     evtchn.Channels
	Log        *slog.Logger
	// Poll is how long the engine keeps looking at the ring after its
	// last piece of work before it arms req_event and sleeps on the event
	// channel. Within it a frontend's next request is seen without an
	// event (and the frontend sends none: req_event is not armed), which
	// saves two wake-ups per URB; it costs that much CPU after each burst.
	// 0 sleeps at once.
	Poll time.Duration
}

// DefaultPoll is the polling window usbback uses.
const DefaultPoll = 50 * time.Microsecond

var le = binary.LittleEndian

// shutdownGrace bounds how long shutdown waits for devices to hand back
// cancelled transfers.
const shutdownGrace = 5 * time.Second

// maxConnQueue bounds the hot-plug events waiting for conn-ring credits.
const maxConnQueue = 4 * usbif.MaxPorts

// Engine serves one vusb. Create it with New once the frontend published
// its rings, then call Run; Plug and Unplug may be called from any goroutine.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	rings grant.Mapping
	urb   *urbBack
	conn  *connBack
	port  evtchn.Port

	// Owned by the Run goroutine.
	ports  [usbif.MaxPorts + 1]portState // 1..NumPorts
	addrs  [128]uint8                    // device address -> port, 0 = none
	slots  [usbif.URBRingSize]slot       // requests handed to a device
	connQ  []connEvent
	err    error
	closed bool

	done chan *stub.Transfer // device completions
	ctl  chan func()         // Plug/Unplug, run on the Run goroutine
	quit chan struct{}

	// Stats, read with Stats().
	stats Stats
}

// Stats counts what the engine did.
type Stats struct {
	Requests, Responses, Errors uint64
	BytesIn, BytesOut           uint64
	InFlight                    int
}

type portState struct {
	dev        stub.Device
	speed      usbif.Speed
	inflight   int
	unplugging bool
	stats      PortStats
}

// PortStats counts one port's traffic since its device was plugged.
type PortStats struct {
	Speed    usbif.Speed
	Identity stub.Identity
	InFlight int
	URBs     uint64 // answered transfers
	Bytes    uint64
	Errors   uint64 // answered with a non-zero status
}

// Ports returns the counters of ports 1..NumPorts (index 0 unused); a
// port without a device has Speed SpeedNone.
func (e *Engine) Ports() []PortStats {
	out := make([]PortStats, e.cfg.NumPorts+1)
	_ = e.do(func() error {
		for p := 1; p <= e.cfg.NumPorts; p++ {
			ps := e.ports[p]
			if ps.dev == nil {
				continue
			}
			st := ps.stats
			st.Speed, st.InFlight = ps.speed, ps.inflight
			st.Identity = ps.dev.Identity()
			out[p] = st
		}
		return nil
	})
	return out
}

// slot is one request handed to a device, with everything it needs
// preallocated so the hot path allocates nothing.
type slot struct {
	used      bool
	req       usbif.URBRequest
	port      uint8
	in        bool
	length    int
	cancelled bool
	unlinks   [usbif.URBRingSize]uint16 // unlink requests answered after this one
	nUnlinks  int
	xfer      stub.Transfer
	buf       []byte
	segs      [usbif.MaxSegments]grant.CopySegment

	// Isochronous: the frame descriptors as the guest granted them, in
	// place (usbif-protocol.md §6.8), and the packets handed to the device.
	desc    [maxIsoPackets * usbif.IsoFrameDescSize]byte
	nDesc   int // bytes of desc in use
	packets [maxIsoPackets]stub.IsoPacket
}

// maxIsoPackets bounds the packets of one isochronous request: usbfs
// takes at most 128 per URB, and so do we.
const maxIsoPackets = 128

type connEvent struct {
	port  uint8
	speed usbif.Speed
}

// New maps the frontend's two ring pages and binds its event channel.
func New(cfg Config, r xenbus.FrontendRings) (*Engine, error) {
	if cfg.NumPorts < 1 || cfg.NumPorts > usbif.MaxPorts {
		return nil, fmt.Errorf("vusb dom%d/%d: num-ports %d", cfg.Dom, cfg.DevID, cfg.NumPorts)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m, err := cfg.Mapper.Map(cfg.Dom, []grant.Ref{grant.Ref(r.URBRingRef), grant.Ref(r.ConnRingRef)}, true)
	if err != nil {
		return nil, fmt.Errorf("map rings of dom%d vusb %d: %w", cfg.Dom, cfg.DevID, err)
	}
	p, err := cfg.Events.BindInterdomain(cfg.Dom, evtchn.Port(r.EventChannel))
	if err != nil {
		m.Unmap()
		return nil, fmt.Errorf("bind event channel %d of dom%d: %w", r.EventChannel, cfg.Dom, err)
	}
	b := m.Bytes()
	e := &Engine{
		cfg: cfg, log: cfg.Log.With("dom", cfg.Dom, "devid", cfg.DevID), rings: m, port: p,
		// BACK_RING_INIT: private indices 0, the shared header untouched.
		urb:  ring.NewBack[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](b[:ring.PageSize]),
		conn: ring.NewBack[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte](b[ring.PageSize : 2*ring.PageSize]),
		done: make(chan *stub.Transfer, usbif.URBRingSize),
		ctl:  make(chan func()),
		quit: make(chan struct{}),
	}
	for i := range e.slots {
		e.slots[i].buf = make([]byte, usbif.MaxTransfer)
	}
	return e, nil
}

// Plug attaches a device to a port (1..NumPorts): it is reset and the
// frontend gets a conn event with its speed.
func (e *Engine) Plug(port uint8, dev stub.Device) error {
	return e.do(func() error {
		if port == 0 || int(port) > e.cfg.NumPorts {
			return fmt.Errorf("port %d outside 1..%d", port, e.cfg.NumPorts)
		}
		if e.ports[port].dev != nil {
			return fmt.Errorf("port %d is in use", port)
		}
		if err := dev.Reset(); err != nil {
			e.log.Warn("backend: reset at attach failed", "port", port, "err", err)
		}
		e.ports[port] = portState{dev: dev, speed: dev.Speed()}
		e.queueConn(port, dev.Speed())
		e.log.Info("backend: device plugged", "port", port, "speed", dev.Speed())
		return nil
	})
}

// Unplug detaches a port's device: every in-flight URB of the port is
// cancelled and answered before the speed-0 event, and the device is closed.
func (e *Engine) Unplug(port uint8) error {
	return e.do(func() error {
		if port == 0 || int(port) > e.cfg.NumPorts || e.ports[port].dev == nil {
			return fmt.Errorf("no device on port %d", port)
		}
		e.unplugLocked(port)
		return nil
	})
}

func (e *Engine) do(f func() error) error {
	errc := make(chan error, 1)
	select {
	case e.ctl <- func() { errc <- f() }:
		return <-errc
	case <-e.quit:
		return errors.New("backend: engine stopped")
	}
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	var s Stats
	_ = e.do(func() error { s = e.stats; return nil })
	return s
}

// Run serves until ctx ends or the frontend breaks the ring protocol
// (the latched error is returned; the caller moves the vusb to Closing).
// On return every device is closed and the rings are unmapped.
func (e *Engine) Run(ctx context.Context) error {
	defer close(e.quit)
	defer e.shutdown()
	evc := make(chan error, 1)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	fired := make(chan evtchn.Port, 1)
	go func() {
		for {
			p, err := e.cfg.Events.Wait(wctx)
			if err != nil {
				evc <- err
				return
			}
			select {
			case fired <- p:
			case <-wctx.Done():
				return
			}
		}
	}()
	// QEMU queues a hot-plug event for every occupied port at connect;
	// anything already on the ring is served at once.
	e.pass(true)
	for e.err == nil {
		if e.cfg.Poll > 0 && e.poll(ctx, fired) {
			e.pass(false)
			continue
		}
		e.pass(true) // armed: from here an event is needed
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-evc:
			return fmt.Errorf("event channel of dom%d vusb %d: %w", e.cfg.Dom, e.cfg.DevID, err)
		case p := <-fired:
			_ = e.cfg.Events.Unmask(p) // before the pass: a later event wakes us again
		case t := <-e.done:
			e.complete(t)
		case f := <-e.ctl:
			f()
		}
		e.pass(false)
	}
	return e.err
}

// poll looks for work without an event for up to Poll: a request on the
// ring, a device completion, a control call. It reports whether it found
// some (done inline for completions and calls).
func (e *Engine) poll(ctx context.Context, fired <-chan evtchn.Port) bool {
	deadline := time.Now().Add(e.cfg.Poll)
	for {
		select {
		case t := <-e.done:
			e.complete(t)
			return true
		case f := <-e.ctl:
			f()
			return true
		case p := <-fired:
			_ = e.cfg.Events.Unmask(p)
			return true
		case <-ctx.Done():
			return false
		default:
		}
		if n, err := e.urb.Poll(); n > 0 || err != nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		runtime.Gosched()
	}
}

// fail latches a ring-level error and logs it once.
func (e *Engine) fail(which string, err error) {
	if e.err != nil {
		return
	}
	e.err = fmt.Errorf("dom%d vusb %d %s ring: %w", e.cfg.Dom, e.cfg.DevID, which, err)
	var ie *ring.IndexError
	if errors.As(err, &ie) {
		e.log.Error("backend: frontend broke the ring; quarantined", "ring", which, "prod", ie.Prod, "private", ie.Pvt, "size", ie.Size)
	} else {
		e.log.Error("backend: ring failure; quarantined", "ring", which, "err", err)
	}
}

// pass serves the urb ring (at most one ring's worth of requests per loop
// iteration, bounded by the free response slots), delivers queued conn
// events, and pushes both rings, notifying once if either asks. With arm
// it ends with the final check that sets req_event, so the frontend
// notifies the next request; without, the caller polls instead.
func (e *Engine) pass(arm bool) {
	var raw [usbif.URBRequestSize]byte
	for e.err == nil {
		if _, err := e.urb.Poll(); err != nil {
			e.fail("urb", err)
			break
		}
		for e.urb.NextRequest(&raw) {
			e.stats.Requests++
			e.handle(&raw)
		}
		if !arm {
			break
		}
		more, err := e.urb.FinalCheckForRequests()
		if err != nil {
			e.fail("urb", err)
			break
		}
		if !more {
			break
		}
	}
	if e.err == nil {
		e.deliverConn()
	}
	notify := e.urb.PushResponses()
	if e.conn.PushResponses() {
		notify = true
	}
	if notify {
		_ = e.cfg.Events.Notify(e.port)
	}
}

func (e *Engine) respond(id uint16, st usbif.Status, actual int) {
	e.respondIso(id, st, actual, 0, 0)
}

func (e *Engine) respondIso(id uint16, st usbif.Status, actual int, startFrame uint16, errorCount int32) {
	var w [usbif.URBResponseSize]byte
	r := usbif.URBResponse{ID: id, Status: st, ActualLength: int32(actual), StartFrame: startFrame, ErrorCount: errorCount}
	r.Encode(&w)
	if err := e.urb.PutResponse(&w); err != nil {
		e.fail("urb", err) // more responses than requests: our bug, never the guest's
		return
	}
	e.stats.Responses++
	if st != usbif.StatusOK {
		e.stats.Errors++
	}
}

func (e *Engine) freeSlot() *slot {
	for i := range e.slots {
		if !e.slots[i].used {
			return &e.slots[i]
		}
	}
	return nil
}

// handle serves one request copied out of the ring.
func (e *Engine) handle(raw *[usbif.URBRequestSize]byte) {
	s := e.freeSlot()
	if s == nil {
		// Cannot happen: the ring never lets more than 16 requests be
		// consumed and unanswered. Answer rather than trust that.
		var r usbif.URBRequest
		r.Decode(raw)
		e.respond(r.ID, usbif.StatusShutdown, 0)
		return
	}
	req := &s.req
	req.Decode(raw)
	if err := usbif.Validate(req, e.cfg.NumPorts); err != nil {
		var re *usbif.RequestError
		st := usbif.StatusShutdown
		if errors.As(err, &re) {
			st = re.Status()
		}
		e.respond(req.ID, st, 0)
		return
	}
	if req.Pipe.Unlink() {
		e.unlink(req)
		return
	}
	port, st := e.route(req)
	if st != usbif.StatusOK {
		e.respond(req.ID, st, 0)
		return
	}
	if req.Pipe.Type() == usbif.TypeCtrl {
		if done := e.intercept(req, port); done {
			e.ports[port].stats.URBs++ // answered here, but a URB of the port all the same
			return
		}
	}
	e.submit(s, port)
}

// route finds the port a request is for: address 0 by the port bits,
// otherwise by the address table, which only holds attached devices.
func (e *Engine) route(req *usbif.URBRequest) (uint8, usbif.Status) {
	var port uint8
	if a := req.Pipe.Device(); a == 0 {
		if req.Pipe.Type() != usbif.TypeCtrl {
			return 0, usbif.StatusNoDev
		}
		port = req.Pipe.Port() // validated 1..NumPorts
	} else {
		port = e.addrs[a]
	}
	if port == 0 || e.ports[port].dev == nil || e.ports[port].unplugging {
		return 0, usbif.StatusNoDev
	}
	return port, usbif.StatusOK
}

// intercept handles the control requests a backend must do itself
// (usbif-protocol.md §8.2.2), matching on type, recipient and request
// (not bRequest alone, unlike QEMU, §11 #5). It reports whether it answered.
func (e *Engine) intercept(req *usbif.URBRequest, port uint8) bool {
	sp := req.Setup()
	dev := e.ports[port].dev
	switch {
	case sp.Is(usbif.ReqSetAddress, usbif.RecipientDevice):
		if sp.Value > 127 {
			e.respond(req.ID, usbif.StatusInval, 0)
			return true
		}
		for a := range e.addrs { // one address per port
			if e.addrs[a] == port {
				e.addrs[a] = 0
			}
		}
		if sp.Value != 0 {
			e.addrs[sp.Value] = port
		}
		e.respond(req.ID, usbif.StatusOK, 0)
		return true
	case req.Pipe.Device() == 0:
		if sp.Request == usbif.ReqGetDescriptor && sp.In() {
			return false // forwarded to the device on that port
		}
		e.respond(req.ID, usbif.StatusInval, 0)
		return true
	case sp.Is(usbif.ReqSetConfiguration, usbif.RecipientDevice):
		e.respond(req.ID, stub.StatusOf(dev.SetConfiguration(uint8(sp.Value))), 0)
		return true
	case sp.Is(usbif.ReqSetInterface, usbif.RecipientInterface):
		e.respond(req.ID, stub.StatusOf(dev.SetInterface(uint8(sp.Index), uint8(sp.Value))), 0)
		return true
	case sp.Is(usbif.ReqClearFeature, usbif.RecipientEndpoint) && sp.Value == usbif.FeatureEndpointHalt:
		e.respond(req.ID, stub.StatusOf(dev.ClearHalt(uint8(sp.Index))), 0)
		return true
	}
	return false
}

// submit moves OUT data in with one batch of grant copies and hands the
// transfer to the device.
func (e *Engine) submit(s *slot, port uint8) {
	req := &s.req
	t := req.Pipe.Type()
	n := req.DataLength()
	in := req.Pipe.In()
	if t == usbif.TypeCtrl {
		sp := req.Setup()
		n, in = int(sp.Length), sp.In() // validated: wLength <= the segments
	}
	s.port, s.in, s.length, s.cancelled, s.nUnlinks, s.nDesc = port, in, n, false, 0, 0
	iso := t == usbif.TypeIsoc
	if iso {
		if st := e.readIsoDescriptors(s); st != usbif.StatusOK {
			e.respond(req.ID, st, 0)
			return
		}
	}
	// Isochronous IN reads the guest's buffer too: the whole data range
	// goes back at completion, so the bytes between packets must be the
	// guest's own, never another transfer's leftovers.
	if (!in || iso) && n > 0 {
		if err := e.copyData(s, false, n); err != nil {
			e.respond(req.ID, usbif.StatusShutdown, 0)
			return
		}
		if !in {
			e.stats.BytesOut += uint64(n)
		}
	}
	s.xfer = stub.Transfer{
		Type:       t,
		Endpoint:   req.Pipe.EndpointAddress(),
		Buffer:     s.buf[:n],
		ShortNotOK: req.TransferFlags&usbif.ShortNotOK != 0 && t != usbif.TypeCtrl && !iso,
		Done:       e.done,
		Cookie:     s,
	}
	switch t {
	case usbif.TypeIntr:
		s.xfer.Interval = int(req.Interval())
	case usbif.TypeIsoc:
		s.xfer.Interval = int(req.Interval())
		s.xfer.Packets = s.packets[:req.NumberOfPackets()]
	}
	if t == usbif.TypeCtrl {
		s.xfer.Setup = req.Setup()
		s.xfer.Endpoint = 0
		if in {
			s.xfer.Endpoint = 0x80
		}
	}
	if err := e.ports[port].dev.Submit(&s.xfer); err != nil {
		e.respond(req.ID, stub.StatusOf(err), 0)
		return
	}
	s.used = true
	e.ports[port].inflight++
	e.stats.InFlight++
}

// copyData copies the first limit bytes between the slot's buffer and
// the request's data segments (toGrant: IN results out to the guest).
func (e *Engine) copyData(s *slot, toGrant bool, limit int) error {
	return e.copySegs(s, 0, int(s.req.NrBufferSegs), s.buf[:limit], toGrant)
}

// copySegs copies local, in order, to or from segments [first, end) of
// the request, as one batch of grant copies.
func (e *Engine) copySegs(s *slot, first, end int, local []byte, toGrant bool) error {
	nseg, off := 0, 0
	for i := first; i < end && off < len(local); i++ {
		sg := s.req.Seg[i]
		l := min(int(sg.Length), len(local)-off)
		s.segs[nseg] = grant.CopySegment{Dom: e.cfg.Dom, Ref: grant.Ref(sg.Gref), Offset: sg.Offset, Local: local[off : off+l], ToGrant: toGrant}
		nseg++
		off += l
	}
	if nseg == 0 {
		return nil
	}
	return e.cfg.Mapper.Copy(s.segs[:nseg])
}

// readIsoDescriptors copies the guest's frame descriptors in (one batch)
// and turns them into the device's packets, checking each against the
// data segments: a packet outside them is a malformed request.
func (e *Engine) readIsoDescriptors(s *slot) usbif.Status {
	req := &s.req
	np := int(req.NumberOfPackets())
	if np == 0 || np > maxIsoPackets {
		return usbif.StatusShutdown
	}
	s.nDesc = np * usbif.IsoFrameDescSize // Validate saw the segments hold at least this
	if err := e.copySegs(s, int(req.NrBufferSegs), req.UsedSegments(), s.desc[:s.nDesc], false); err != nil {
		return usbif.StatusShutdown
	}
	for i := 0; i < np; i++ {
		var d usbif.IsoFrameDesc
		d.Decode((*[usbif.IsoFrameDescSize]byte)(s.desc[i*usbif.IsoFrameDescSize:]))
		if uint64(d.Offset)+uint64(d.Length) > uint64(s.length) {
			return usbif.StatusShutdown
		}
		s.packets[i] = stub.IsoPacket{Offset: int(d.Offset), Length: int(d.Length)}
	}
	return usbif.StatusOK
}

// writeIsoDescriptors puts each packet's result into the guest's frame
// descriptors and copies them back (the descriptor pages are writable).
func (e *Engine) writeIsoDescriptors(s *slot) error {
	for i, p := range s.xfer.Packets {
		b := s.desc[i*usbif.IsoFrameDescSize:]
		actual := min(max(p.Actual, 0), p.Length)
		le.PutUint32(b[8:], uint32(actual))
		le.PutUint32(b[12:], uint32(int32(p.Status)))
	}
	return e.copySegs(s, int(s.req.NrBufferSegs), s.req.UsedSegments(), s.desc[:s.nDesc], true)
}

// complete answers a finished transfer: IN data copied out first (the
// grants are released before the response, as xen-hcd demands), then the
// response, then any unlinks that waited for it.
func (e *Engine) complete(t *stub.Transfer) {
	s, ok := t.Cookie.(*slot)
	if !ok || !s.used || &s.xfer != t {
		return // not ours: a device bug, never trust it
	}
	st, actual := t.Status, t.Actual
	if st == usbif.StatusRemoteIO {
		// A short IN under SHORT_NOT_OK: usbif has no status for it, and
		// xen-hcd turns any status outside usbif's list into -ESHUTDOWN, a
		// fatal error for usb-storage. QEMU answers status 0 with the short
		// length (usbif-protocol.md §6.11); so do we.
		st = usbif.StatusOK
	}
	if actual < 0 || actual > s.length {
		actual, st = 0, usbif.StatusShutdown // a device claiming more than it was given
	}
	var startFrame uint16
	var errorCount int32
	if s.xfer.Type == usbif.TypeIsoc {
		// The packets carry the data; the whole range goes back for IN
		// (it was read from the guest first, so gaps keep the guest's bytes).
		startFrame, errorCount = uint16(t.StartFrame), int32(t.ErrorCount)
		err := e.writeIsoDescriptors(s)
		if err == nil && s.in {
			err = e.copyData(s, true, s.length)
		}
		if err != nil {
			st, actual = usbif.StatusShutdown, 0
		} else if s.in {
			e.stats.BytesIn += uint64(actual)
		}
	} else if s.in && actual > 0 && st != usbif.StatusShutdown {
		if err := e.copyData(s, true, actual); err != nil {
			st, actual = usbif.StatusShutdown, 0
		} else {
			e.stats.BytesIn += uint64(actual)
		}
	}
	if !s.in {
		actual = min(actual, s.length)
	}
	e.respondIso(s.req.ID, st, actual, startFrame, errorCount)
	ps := &e.ports[s.port].stats
	ps.URBs++
	ps.Bytes += uint64(actual)
	if st != usbif.StatusOK {
		ps.Errors++
	}
	for i := 0; i < s.nUnlinks; i++ {
		e.respond(s.unlinks[i], usbif.StatusOK, 0)
	}
	s.used = false
	e.stats.InFlight--
	p := &e.ports[s.port]
	p.inflight--
	if p.unplugging && p.inflight == 0 {
		e.finishUnplug(s.port)
	}
}

// unlink cancels the in-flight request with the given id; the target is
// answered first, then the unlink (usbif-protocol.md §6.9).
func (e *Engine) unlink(req *usbif.URBRequest) {
	target := req.UnlinkID()
	for i := range e.slots {
		s := &e.slots[i]
		if !s.used || s.req.ID != target {
			continue
		}
		if s.nUnlinks == len(s.unlinks) {
			e.respond(req.ID, usbif.StatusOK, 0)
			return
		}
		s.unlinks[s.nUnlinks] = req.ID
		s.nUnlinks++
		if !s.cancelled {
			s.cancelled = true
			e.ports[s.port].dev.Cancel(&s.xfer)
		}
		return
	}
	// Not in flight: already answered, or never existed. An unlink for an
	// address nobody holds is -ENODEV, as QEMU answers.
	if a := req.Pipe.Device(); a != 0 && e.addrs[a] == 0 {
		e.respond(req.ID, usbif.StatusNoDev, 0)
		return
	}
	e.respond(req.ID, usbif.StatusOK, 0)
}

func (e *Engine) unplugLocked(port uint8) {
	p := &e.ports[port]
	p.unplugging = true
	for a := range e.addrs {
		if e.addrs[a] == port {
			e.addrs[a] = 0 // stale addresses must not reach another device (§11 #4)
		}
	}
	for i := range e.slots {
		s := &e.slots[i]
		if s.used && s.port == port && !s.cancelled {
			s.cancelled = true
			p.dev.Cancel(&s.xfer)
		}
	}
	if p.inflight == 0 {
		e.finishUnplug(port)
	}
}

func (e *Engine) finishUnplug(port uint8) {
	p := &e.ports[port]
	if err := p.dev.Close(); err != nil {
		e.log.Warn("backend: closing the unplugged device", "port", port, "err", err)
	}
	*p = portState{}
	e.queueConn(port, usbif.SpeedNone)
	e.log.Info("backend: device unplugged", "port", port)
}

func (e *Engine) queueConn(port uint8, speed usbif.Speed) {
	if len(e.connQ) >= maxConnQueue {
		e.log.Warn("backend: hot-plug queue full; dropping the oldest event", "port", e.connQ[0].port)
		e.connQ = e.connQ[1:]
	}
	e.connQ = append(e.connQ, connEvent{port, speed})
}

// deliverConn answers queued hot-plug events with the frontend's credits,
// one per event; with none left it arms req_event to hear of more.
func (e *Engine) deliverConn() {
	var credit [usbif.ConnRequestSize]byte
	for len(e.connQ) > 0 {
		n, err := e.conn.Poll()
		if err != nil {
			e.fail("conn", err)
			return
		}
		if n == 0 {
			if more, err := e.conn.FinalCheckForRequests(); err != nil || !more {
				if err != nil {
					e.fail("conn", err)
				}
				return
			}
			continue
		}
		e.conn.NextRequest(&credit)
		var c usbif.ConnRequest
		c.Decode(&credit)
		ev := e.connQ[0]
		e.connQ = e.connQ[1:]
		var w [usbif.ConnResponseSize]byte
		(&usbif.ConnResponse{ID: c.ID, Port: ev.port, Speed: ev.speed}).Encode(&w)
		if err := e.conn.PutResponse(&w); err != nil {
			e.fail("conn", err)
			return
		}
	}
}

// shutdown cancels everything in flight, waits for the devices to hand
// the transfers back, closes the devices, unbinds and unmaps. Responses
// can no longer be trusted to reach the frontend; they are not written.
func (e *Engine) shutdown() {
	if e.closed {
		return
	}
	e.closed = true
	for i := range e.slots {
		s := &e.slots[i]
		if s.used && !s.cancelled {
			s.cancelled = true
			e.ports[s.port].dev.Cancel(&s.xfer)
		}
	}
	deadline := time.After(shutdownGrace)
	for e.stats.InFlight > 0 {
		select {
		case t := <-e.done:
			if s, ok := t.Cookie.(*slot); ok && s.used {
				s.used = false
				e.stats.InFlight--
			}
		case <-deadline:
			// A device that never returns a cancelled transfer must not
			// hang the daemon: give up on it (its buffers stay with it).
			e.log.Error("backend: device did not return cancelled transfers", "in_flight", e.stats.InFlight)
			e.stats.InFlight = 0
		}
	}
	for p := range e.ports {
		if d := e.ports[p].dev; d != nil {
			_ = d.Close()
			e.ports[p] = portState{}
		}
	}
	_ = e.cfg.Events.Unbind(e.port)
	_ = e.rings.Unmap()
}

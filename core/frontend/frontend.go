// Package frontend is the guest side of one vusb: it grants the two ring
// pages and dedicated bounce pages to the backend, pre-posts and re-posts
// the conn ring's credits, submits URBs (per-page segments, up to 16 in
// flight, a queue when the ring is full), unlinks them, and checks every
// response the way hardened xen-hcd does: the backend is not trusted
// (usbif-protocol.md §10.3). A violation latches an error: in-flight URBs
// complete with -ESHUTDOWN, new ones fail, nothing crashes.
//
// Only bounce pages are ever granted (§10.5): the caller's buffers are
// copied in and out, so a backend sees nothing but the bytes of its own
// transfers. Data pages are granted read-only for OUT transfers.
package frontend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/stub"
)

type (
	urbFront  = ring.Front[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte]
	connFront = ring.Front[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte]
)

// Slots is how many URBs may be in flight: one per urb-ring slot. Their
// ids are 0..15 (xen-hcd's shadow ids); unlinks use 16 + the target's id.
const Slots = usbif.URBRingSize

// MaxTransfer is the largest transfer: 16 pages of data.
const MaxTransfer = usbif.MaxSegments * grant.PageSize

// MaxIsoPackets bounds an isochronous URB's packets (one descriptor page).
const MaxIsoPackets = grant.PageSize / usbif.IsoFrameDescSize

// ErrProtocol: the backend broke the protocol; the frontend is dead.
var ErrProtocol = errors.New("frontend: backend protocol error")

// ErrClosed: the frontend was closed.
var ErrClosed = errors.New("frontend: closed")

// URB is one transfer. The caller fills the request fields, Submit takes
// it, and it comes back on Done exactly once with the result fields set.
type URB struct {
	Port       uint8 // root-hub port 1..N
	Addr       uint8 // device address, 0 before SET_ADDRESS
	Endpoint   uint8 // bEndpointAddress (bit 7 = IN); for control, the direction of the data stage
	Type       usbif.PipeType
	Setup      usbif.SetupPacket // control
	Buffer     []byte            // OUT: the data; IN: room for it
	ShortNotOK bool
	Interval   int              // interrupt, isochronous
	Packets    []stub.IsoPacket // isochronous: offsets and lengths in Buffer; results set on completion
	Done       chan<- *URB      // sized by the caller so a send never blocks
	Context    any              // the caller's

	Status     usbif.Status
	Actual     int
	StartFrame int
	ErrorCount int

	slot     int
	unlinked bool
}

// In reports an IN transfer.
func (u *URB) In() bool {
	if u.Type == usbif.TypeCtrl {
		return u.Setup.In()
	}
	return u.Endpoint&0x80 != 0
}

// Config is one vusb to drive.
type Config struct {
	BackDom  uint32
	NumPorts int // the backend's num-ports, 1..31
	Granter  grant.Granter
	Events   evtchn.Channels
	Log      *slog.Logger
	// OnConn receives each validated conn-ring event (port 1..NumPorts,
	// speed 0..3), from the event goroutine, in ring order.
	OnConn func(port uint8, speed usbif.Speed)
	// Poll is how long Run keeps looking at the rings after the last
	// response while URBs are in flight, before it arms rsp_event and
	// sleeps on the event channel: a response within it needs no event
	// (the backend sends none). 0 sleeps at once.
	Poll time.Duration
}

// DefaultPoll is the polling window usbfront uses.
const DefaultPoll = 50 * time.Microsecond

// slot is one in-flight URB and its bounce pages, granted once.
type slot struct {
	in   grant.Grant // 16 pages, writable: IN data
	out  grant.Grant // 16 pages, read-only: OUT data
	desc grant.Grant // 1 page, writable: isochronous frame descriptors
	urb  *URB
	// unlinkPending: an unlink for this slot is queued or on the ring.
	unlinkPending, unlinkOnRing bool
}

// Frontend drives one vusb. Safe for concurrent use.
type Frontend struct {
	cfg   Config
	log   *slog.Logger
	rings grant.Grant
	urb   *urbFront
	conn  *connFront
	port  evtchn.Port

	mu      sync.Mutex
	slots   [Slots]slot
	queue   []*URB // waiting for a slot or ring room
	unlinks []int  // slots whose unlink waits for ring room
	err     error  // latched
	stats   Stats
	done    chan struct{}
}

// Stats counts what the frontend did.
type Stats struct {
	Submitted, Completed, Unlinks uint64
	BytesIn, BytesOut             uint64
	ConnEvents, Spurious          uint64
}

// New grants the rings and bounce pages, allocates an unbound event
// channel for the backend and pre-posts every conn credit, as
// xenhcd_connect does. Publish the returned rings (xenbus), then Run.
func New(cfg Config) (*Frontend, xenbus.FrontendRings, error) {
	if cfg.NumPorts < 1 || cfg.NumPorts > usbif.MaxPorts {
		return nil, xenbus.FrontendRings{}, fmt.Errorf("frontend: num-ports %d", cfg.NumPorts)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	f := &Frontend{cfg: cfg, log: cfg.Log.With("backend-dom", cfg.BackDom), done: make(chan struct{})}
	fail := func(err error) (*Frontend, xenbus.FrontendRings, error) {
		f.release()
		return nil, xenbus.FrontendRings{}, err
	}
	var err error
	if f.rings, err = cfg.Granter.Grant(cfg.BackDom, 2, true); err != nil {
		return fail(fmt.Errorf("grant ring pages to dom%d: %w", cfg.BackDom, err))
	}
	b := f.rings.Bytes()
	f.urb = ring.NewFront[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](b[:ring.PageSize])
	f.conn = ring.NewFront[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte](b[ring.PageSize : 2*ring.PageSize])
	for i := range f.slots {
		s := &f.slots[i]
		if s.in, err = cfg.Granter.Grant(cfg.BackDom, usbif.MaxSegments, true); err == nil {
			if s.out, err = cfg.Granter.Grant(cfg.BackDom, usbif.MaxSegments, false); err == nil {
				s.desc, err = cfg.Granter.Grant(cfg.BackDom, 1, true)
			}
		}
		if err != nil {
			return fail(fmt.Errorf("grant bounce pages to dom%d: %w", cfg.BackDom, err))
		}
	}
	if f.port, err = cfg.Events.BindUnbound(cfg.BackDom); err != nil {
		return fail(fmt.Errorf("event channel for dom%d: %w", cfg.BackDom, err))
	}
	var q [usbif.ConnRequestSize]byte
	for i := 0; i < usbif.ConnRingSize; i++ {
		(&usbif.ConnRequest{ID: uint16(i)}).Encode(&q)
		f.conn.PutRequest(&q)
	}
	f.conn.PushRequests() // the backend is not bound yet: Run's first kick tells it
	refs := f.rings.Refs()
	return f, xenbus.FrontendRings{URBRingRef: uint32(refs[0]), ConnRingRef: uint32(refs[1]), EventChannel: uint32(f.port)}, nil
}

// release revokes every grant (a grant the backend still maps is
// reported: xen-hcd's "backend didn't release grant").
func (f *Frontend) release() error {
	var errs []error
	end := func(g grant.Grant) {
		if g == nil {
			return
		}
		if err := g.End(); err != nil {
			errs = append(errs, err)
		}
	}
	for i := range f.slots {
		end(f.slots[i].in)
		end(f.slots[i].out)
		end(f.slots[i].desc)
	}
	end(f.rings)
	return errors.Join(errs...)
}

// Err is the latched protocol error, if any.
func (f *Frontend) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// Stats returns the counters.
func (f *Frontend) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Submit queues u; it goes on the ring at once when a slot and ring room
// are free. The result comes on u.Done.
func (f *Frontend) Submit(u *URB) error {
	if err := checkURB(u, f.cfg.NumPorts); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return fmt.Errorf("%w: %v", ErrProtocol, f.err)
	}
	u.Status, u.Actual, u.StartFrame, u.ErrorCount, u.unlinked, u.slot = 0, 0, 0, 0, false, -1
	f.queue = append(f.queue, u)
	f.stats.Submitted++
	f.pumpLocked()
	return nil
}

// checkURB refuses what cannot be expressed on the ring.
func checkURB(u *URB, numPorts int) error {
	switch {
	case u.Port == 0 || int(u.Port) > numPorts:
		return fmt.Errorf("frontend: port %d outside 1..%d", u.Port, numPorts)
	case u.Addr > 127 || u.Endpoint&0x70 != 0:
		return fmt.Errorf("frontend: address %d endpoint 0x%02x", u.Addr, u.Endpoint)
	case len(u.Buffer) > MaxTransfer:
		return fmt.Errorf("frontend: %d bytes (at most %d)", len(u.Buffer), MaxTransfer)
	case u.Type == usbif.TypeCtrl && int(u.Setup.Length) != len(u.Buffer):
		return fmt.Errorf("frontend: control wLength %d with a %d-byte buffer", u.Setup.Length, len(u.Buffer))
	case u.Type == usbif.TypeIsoc && (len(u.Packets) == 0 || len(u.Packets) > MaxIsoPackets || len(u.Buffer) > MaxTransfer-grant.PageSize):
		return fmt.Errorf("frontend: isochronous URB of %d packets, %d bytes", len(u.Packets), len(u.Buffer))
	case u.Done == nil:
		return errors.New("frontend: URB without a Done channel")
	}
	for i, p := range u.Packets {
		if p.Offset < 0 || p.Length < 0 || p.Offset+p.Length > len(u.Buffer) {
			return fmt.Errorf("frontend: iso packet %d outside the buffer", i)
		}
	}
	return nil
}

// pumpLocked moves queued unlinks and URBs onto the ring while there is
// room, and notifies once if the backend asks.
func (f *Frontend) pumpLocked() {
	put := false
	for len(f.unlinks) > 0 && !f.urb.Full() {
		i := f.unlinks[0]
		f.unlinks = f.unlinks[:copy(f.unlinks, f.unlinks[1:])]
		s := &f.slots[i]
		if s.urb == nil || !s.unlinkPending {
			continue // answered meanwhile
		}
		f.putUnlinkLocked(i)
		put = true
	}
	for len(f.queue) > 0 && !f.urb.Full() {
		i := f.freeSlotLocked()
		if i < 0 {
			break
		}
		u := f.queue[0]
		n := copy(f.queue, f.queue[1:]) // keep the array: reslicing the front would make appends allocate
		f.queue[n] = nil
		f.queue = f.queue[:n]
		f.putLocked(i, u)
		put = true
	}
	if put && f.urb.PushRequests() {
		_ = f.cfg.Events.Notify(f.port)
	}
}

func (f *Frontend) freeSlotLocked() int {
	for i := range f.slots {
		if f.slots[i].urb == nil && !f.slots[i].unlinkOnRing {
			return i
		}
	}
	return -1
}

// putLocked builds the request the way xen-hcd does, over the slot's
// bounce pages: data in whole pages from offset 0, OUT data copied in,
// iso descriptors in their own page.
func (f *Frontend) putLocked(i int, u *URB) {
	s := &f.slots[i]
	s.urb, u.slot = u, i
	var r usbif.URBRequest
	r.ID = uint16(i)
	in := u.In()
	ep := u.Endpoint & 0x0f
	if u.Type == usbif.TypeCtrl {
		ep = 0
	}
	r.Pipe = usbif.NewPipe(u.Port, u.Addr, ep, in, u.Type)
	if u.ShortNotOK && in {
		r.TransferFlags = usbif.ShortNotOK
	}
	r.BufferLength = uint16(len(u.Buffer)) // mod 65536, as xen-hcd
	g := s.out
	if in {
		g = s.in
	}
	pages, refs := g.Bytes(), g.Refs()
	if !in {
		copy(pages, u.Buffer)
		f.stats.BytesOut += uint64(len(u.Buffer))
	}
	n := 0
	for off := 0; off < len(u.Buffer); off += grant.PageSize {
		r.Seg[n] = usbif.Segment{Gref: uint32(refs[n]), Offset: 0, Length: uint16(min(grant.PageSize, len(u.Buffer)-off))}
		n++
	}
	r.NrBufferSegs = uint16(n)
	switch u.Type {
	case usbif.TypeCtrl:
		r.SetSetup(u.Setup)
	case usbif.TypeIntr:
		r.SetInterval(uint16(u.Interval))
	case usbif.TypeIsoc:
		d := s.desc.Bytes()
		for k, p := range u.Packets {
			(&usbif.IsoFrameDesc{Offset: uint32(p.Offset), Length: uint32(p.Length)}).Encode((*[usbif.IsoFrameDescSize]byte)(d[k*usbif.IsoFrameDescSize:]))
		}
		r.Seg[n] = usbif.Segment{Gref: uint32(s.desc.Refs()[0]), Offset: 0, Length: uint16(len(u.Packets) * usbif.IsoFrameDescSize)}
		r.SetIsoc(uint16(u.Interval), 0, uint16(len(u.Packets)), 1)
	}
	var b [usbif.URBRequestSize]byte
	r.Encode(&b)
	_ = f.urb.PutRequest(&b) // room checked by the caller
}

// Unlink asks the backend to cancel u; u still completes through Done
// (with the backend's status for it). Unlinking a URB that is only
// queued completes it at once with -ECONNRESET.
func (f *Frontend) Unlink(u *URB) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, q := range f.queue {
		if q == u {
			f.queue = append(f.queue[:k], f.queue[k+1:]...)
			f.finishLocked(u, usbif.StatusConnReset)
			return
		}
	}
	if u.slot < 0 || u.slot >= Slots || f.slots[u.slot].urb != u {
		return // already completed
	}
	s := &f.slots[u.slot]
	if s.unlinkPending || f.err != nil {
		return
	}
	s.unlinkPending = true
	u.unlinked = true
	f.stats.Unlinks++
	f.unlinks = append(f.unlinks, u.slot)
	f.pumpLocked()
}

func (f *Frontend) putUnlinkLocked(i int) {
	s := &f.slots[i]
	u := s.urb
	var r usbif.URBRequest
	r.ID = uint16(Slots + i)
	r.Pipe = usbif.NewPipe(u.Port, u.Addr, u.Endpoint&0x0f, u.In(), u.Type) | usbif.PipeUnlink
	r.SetUnlinkID(uint16(i))
	var b [usbif.URBRequestSize]byte
	r.Encode(&b)
	_ = f.urb.PutRequest(&b)
	s.unlinkOnRing = true
}

// finishLocked completes u with st (a local failure or cancellation).
func (f *Frontend) finishLocked(u *URB, st usbif.Status) {
	u.Status, u.Actual = st, 0
	f.stats.Completed++
	u.Done <- u
}

// latchLocked records a protocol error: logged once; every URB waiting
// or in flight completes with -ESHUTDOWN; nothing is sent any more.
func (f *Frontend) latchLocked(what string, err error) {
	if f.err != nil {
		return
	}
	f.err = fmt.Errorf("%s: %w", what, err)
	f.log.Error("frontend: protocol error; the vusb is dead", "err", f.err)
	for _, u := range f.queue {
		f.finishLocked(u, usbif.StatusShutdown)
	}
	f.queue, f.unlinks = nil, nil
	for i := range f.slots {
		if u := f.slots[i].urb; u != nil {
			f.finishLocked(u, usbif.StatusShutdown)
			// The backend may still write these pages: the slot is
			// never reused (the whole frontend is dead).
		}
	}
}

// Run serves events until ctx ends or the backend breaks the protocol
// (the latched error is returned). It kicks the backend first: the conn
// credits and anything queued are there to see.
func (f *Frontend) Run(ctx context.Context) error {
	defer close(f.done)
	// wctx lets the watchdog wake a Run asleep on the event channel once
	// it latched an error (the backend died: no event will come).
	wctx, wake := context.WithCancel(ctx)
	defer wake()
	go func() {
		t := time.NewTicker(watchdogPeriod)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if f.watchdog() {
					wake()
				}
			case <-ctx.Done():
				return
			case <-f.done:
				return
			}
		}
	}()
	_ = f.cfg.Events.Notify(f.port)
	for {
		if f.cfg.Poll > 0 && f.poll(ctx) {
			f.mu.Lock()
			f.serviceLocked(false)
			f.mu.Unlock()
			continue
		}
		f.mu.Lock()
		more := f.serviceLocked(true)
		err := f.err
		f.mu.Unlock()
		if err != nil {
			return err
		}
		if more {
			continue
		}
		p, werr := f.cfg.Events.Wait(wctx)
		if werr != nil {
			if ctx.Err() != nil {
				return nil
			}
			if err := f.Err(); err != nil {
				return err // latched by the watchdog
			}
			return fmt.Errorf("event channel: %w", werr)
		}
		// A fired port stays masked until unmasked; the rings are looked
		// at again right after, so nothing is missed.
		_ = f.cfg.Events.Unmask(p)
	}
}

// watchdogPeriod is how often Run's watchdog kicks the backend while URBs
// are outstanding (xen-hcd's watchdog does the same): a lost event is
// recovered, and a backend that is gone is found out.
const watchdogPeriod = time.Second

// watchdog notifies the backend when URBs wait; if the channel's peer is
// gone (the backend died), everything outstanding fails now instead of
// hanging until the device is created anew.
// It reports whether it latched an error.
func (f *Frontend) watchdog() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil || (f.urb.Outstanding() == 0 && len(f.queue) == 0) {
		return false
	}
	if err := f.cfg.Events.Notify(f.port); err != nil {
		f.latchLocked("backend gone", err)
		return true
	}
	return false
}

// poll watches the urb ring for up to Poll while URBs are in flight and
// reports whether a response came (or the frontend failed).
func (f *Frontend) poll(ctx context.Context) bool {
	deadline := time.Now().Add(f.cfg.Poll)
	for ctx.Err() == nil {
		f.mu.Lock()
		busy := f.urb.Outstanding() > 0 && f.err == nil
		n, err := uint32(0), error(nil)
		if busy {
			n, err = f.urb.Poll()
		}
		f.mu.Unlock()
		if !busy {
			return false
		}
		if n > 0 || err != nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		runtime.Gosched()
	}
	return false
}

// serviceLocked takes every response and conn event, re-posts credits,
// pushes what waited for room, and (arm) arms the event indices. It
// reports whether more arrived meanwhile.
func (f *Frontend) serviceLocked(arm bool) bool {
	if f.err != nil {
		return false
	}
	got := f.responsesLocked()
	got = f.connLocked() || got
	if f.err != nil {
		return false
	}
	f.pumpLocked()
	if !got && arm {
		f.stats.Spurious++
	}
	if !arm {
		return false
	}
	more, err := f.urb.FinalCheckForResponses()
	if err != nil {
		f.latchLocked("Illegal index on urb-ring", err)
		return false
	}
	cmore, err := f.conn.FinalCheckForResponses()
	if err != nil {
		f.latchLocked("Illegal index on conn-ring", err)
		return false
	}
	return more || cmore
}

// responsesLocked checks and applies each urb response (xenhcd_urb_request_done).
func (f *Frontend) responsesLocked() bool {
	if _, err := f.urb.Poll(); err != nil {
		f.latchLocked("Illegal index on urb-ring", err)
		return false
	}
	got := false
	var raw [usbif.URBResponseSize]byte
	for f.err == nil && f.urb.NextResponse(&raw) {
		got = true
		var r usbif.URBResponse
		r.Decode(&raw)
		switch {
		case r.ID < Slots:
			f.completeLocked(&r)
		case r.ID < 2*Slots:
			s := &f.slots[r.ID-Slots]
			if !s.unlinkOnRing {
				f.latchLocked("Illegal request id", fmt.Errorf("unlink response %d not in flight", r.ID))
				return got
			}
			s.unlinkOnRing = false
			if s.urb == nil || s.urb.slot != int(r.ID-Slots) {
				s.unlinkPending = false
			}
		default:
			f.latchLocked("Illegal data on urb-ring", fmt.Errorf("response id %d", r.ID))
		}
	}
	return got
}

// completeLocked hands a URB its result: status checked, actual length
// clamped, IN data and iso results copied out of the bounce pages.
func (f *Frontend) completeLocked(r *usbif.URBResponse) {
	s := &f.slots[r.ID]
	u := s.urb
	if u == nil {
		f.latchLocked("Illegal request id", fmt.Errorf("response for id %d, not in flight", r.ID))
		return
	}
	if stillMapped(s.in) || stillMapped(s.out) || stillMapped(s.desc) {
		f.latchLocked("backend didn't release grant", fmt.Errorf("id %d", r.ID))
		return
	}
	st := r.Status
	if !st.Known() {
		st = usbif.StatusShutdown // xenhcd_translate_status
	}
	actual := max(0, min(int(r.ActualLength), len(u.Buffer)))
	if u.In() {
		if u.Type == usbif.TypeIsoc {
			copy(u.Buffer, s.in.Bytes()[:len(u.Buffer)])
		} else {
			copy(u.Buffer[:actual], s.in.Bytes())
		}
		f.stats.BytesIn += uint64(actual)
	}
	if u.Type == usbif.TypeIsoc {
		d := s.desc.Bytes()
		for k := range u.Packets {
			var fd usbif.IsoFrameDesc
			fd.Decode((*[usbif.IsoFrameDescSize]byte)(d[k*usbif.IsoFrameDescSize:]))
			p := &u.Packets[k]
			p.Actual = max(0, min(int(fd.ActualLength), p.Length))
			p.Status = usbif.Status(fd.Status)
			if !p.Status.Known() {
				p.Status = usbif.StatusShutdown
			}
		}
		u.StartFrame, u.ErrorCount = int(r.StartFrame), max(0, min(int(r.ErrorCount), len(u.Packets)))
	}
	s.urb = nil
	if !s.unlinkOnRing {
		s.unlinkPending = false
	}
	u.Status, u.Actual = st, actual
	f.stats.Completed++
	u.Done <- u
}

// stillMapped reports a grant the backend maps after answering. Only the
// simulator can tell: gntalloc has no such query (on Xen the pages are
// dedicated bounce pages, so a late mapping exposes nothing else).
func stillMapped(g grant.Grant) bool {
	m, ok := g.(interface{ Mapped() bool })
	return ok && m.Mapped()
}

// connLocked checks and applies conn events, re-posting each credit at
// once with the same id (xenhcd_conn_notify).
func (f *Frontend) connLocked() bool {
	if _, err := f.conn.Poll(); err != nil {
		f.latchLocked("Illegal index on conn-ring", err)
		return false
	}
	got := false
	var raw [usbif.ConnResponseSize]byte
	for f.err == nil && f.conn.NextResponse(&raw) {
		got = true
		var ev usbif.ConnResponse
		ev.Decode(&raw)
		if ev.Port == 0 || int(ev.Port) > f.cfg.NumPorts || ev.Speed > usbif.SpeedHigh {
			f.latchLocked("Illegal data on conn-ring", fmt.Errorf("port %d speed %d", ev.Port, ev.Speed))
			return got
		}
		f.stats.ConnEvents++
		var q [usbif.ConnRequestSize]byte
		(&usbif.ConnRequest{ID: ev.ID}).Encode(&q)
		_ = f.conn.PutRequest(&q) // a credit consumed is a slot free
		if f.cfg.OnConn != nil {
			f.cfg.OnConn(ev.Port, ev.Speed)
		}
	}
	if got && f.conn.PushRequests() {
		_ = f.cfg.Events.Notify(f.port)
	}
	return got
}

// Close completes whatever waits with -ESHUTDOWN, unbinds the channel and
// revokes the grants. Call it after Run returned and the backend was told
// (Closing): a grant the backend still maps is reported.
func (f *Frontend) Close() error {
	f.mu.Lock()
	if f.err == nil {
		f.err = ErrClosed
		for _, u := range f.queue {
			f.finishLocked(u, usbif.StatusShutdown)
		}
		f.queue = nil
		for i := range f.slots {
			if u := f.slots[i].urb; u != nil {
				f.finishLocked(u, usbif.StatusShutdown)
				f.slots[i].urb = nil
			}
		}
	}
	f.mu.Unlock()
	uerr := f.cfg.Events.Unbind(f.port)
	return errors.Join(uerr, f.release())
}

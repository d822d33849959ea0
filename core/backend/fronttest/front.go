package fronttest

import (
	"context"
	"errors"
	"fmt"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ring"
)

// DataOffset is where a transfer's data starts in its first page: odd on
// purpose, as kmalloc'd URB buffers are, so segments split mid-page.
const DataOffset = 0x123

// Front is a frontend for one vusb, in the style of Linux xen-hcd. One
// goroutine uses it at a time.
type Front struct {
	g       grant.Granter
	ev      evtchn.Channels
	backDom uint32
	rings   grant.Grant
	urb     *ring.Front[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte]
	conn    *ring.Front[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte]
	port    evtchn.Port
	free    []uint16
	got     map[uint16][]usbif.URBResponse // by id; a lying frontend may reuse ids
	events  []usbif.ConnResponse

	// Mutate, when set, rewrites each request before it goes on the
	// ring: the way to make the frontend lie.
	Mutate func(*usbif.URBRequest)
}

// New grants the two ring pages, initialises them, allocates an unbound
// event channel and pre-posts all 512 conn credits, as xenhcd_connect does.
func New(g grant.Granter, ev evtchn.Channels, backDom uint32) (*Front, xenbus.FrontendRings, error) {
	rings, err := g.Grant(backDom, 2, true)
	if err != nil {
		return nil, xenbus.FrontendRings{}, err
	}
	b := rings.Bytes()
	f := &Front{g: g, ev: ev, backDom: backDom, rings: rings, got: map[uint16][]usbif.URBResponse{},
		urb:  ring.NewFront[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](b[:ring.PageSize]),
		conn: ring.NewFront[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte](b[ring.PageSize:]),
	}
	for id := uint16(usbif.URBRingSize); id > 0; id-- {
		f.free = append(f.free, id-1)
	}
	if f.port, err = ev.BindUnbound(backDom); err != nil {
		return nil, xenbus.FrontendRings{}, err
	}
	for i := 0; i < usbif.ConnRingSize; i++ {
		var q [usbif.ConnRequestSize]byte
		(&usbif.ConnRequest{ID: uint16(i)}).Encode(&q)
		f.conn.PutRequest(&q)
	}
	f.conn.PushRequests()
	refs := rings.Refs()
	return f, xenbus.FrontendRings{URBRingRef: uint32(refs[0]), ConnRingRef: uint32(refs[1]), EventChannel: uint32(f.port)}, nil
}

// URBPage is the shared urb ring page, for tests that lie about indices.
func (f *Front) URBPage() []byte { return f.rings.Bytes()[:ring.PageSize] }

// AllocID takes an id from the 16-entry free list.
func (f *Front) AllocID() (uint16, error) {
	if len(f.free) == 0 {
		return 0, errors.New("fronttest: 16 requests in flight")
	}
	id := f.free[len(f.free)-1]
	f.free = f.free[:len(f.free)-1]
	return id, nil
}

// FreeID returns an id to the free list.
func (f *Front) FreeID(id uint16) { f.free = append(f.free, id) }

// Submit puts one request on the ring (after Mutate), pushes, notifies.
func (f *Front) Submit(req *usbif.URBRequest) error {
	if f.Mutate != nil {
		f.Mutate(req)
	}
	var b [usbif.URBRequestSize]byte
	req.Encode(&b)
	if err := f.urb.PutRequest(&b); err != nil {
		return err
	}
	if f.urb.PushRequests() {
		return f.ev.Notify(f.port)
	}
	return nil
}

// Kick notifies the backend without pushing anything.
func (f *Front) Kick() error { return f.ev.Notify(f.port) }

// poll collects responses and conn events; it re-posts each conn credit
// at once, as xen-hcd does.
func (f *Front) poll() error {
	if _, err := f.urb.Poll(); err != nil {
		return err
	}
	var r [usbif.URBResponseSize]byte
	for f.urb.NextResponse(&r) {
		var rsp usbif.URBResponse
		rsp.Decode(&r)
		f.got[rsp.ID] = append(f.got[rsp.ID], rsp)
	}
	if _, err := f.conn.Poll(); err != nil {
		return err
	}
	var c [usbif.ConnResponseSize]byte
	reposted := false
	for f.conn.NextResponse(&c) {
		var ev usbif.ConnResponse
		ev.Decode(&c)
		f.events = append(f.events, ev)
		var q [usbif.ConnRequestSize]byte
		(&usbif.ConnRequest{ID: ev.ID}).Encode(&q)
		f.conn.PutRequest(&q)
		reposted = true
	}
	if reposted && f.conn.PushRequests() {
		return f.ev.Notify(f.port)
	}
	return nil
}

// waitFor polls until cond holds, sleeping on the event channel with
// rsp_event armed (the final check) so no notification is missed.
func (f *Front) waitFor(ctx context.Context, cond func() bool) error {
	for {
		if err := f.poll(); err != nil {
			return err
		}
		if cond() {
			return nil
		}
		more, err := f.urb.FinalCheckForResponses()
		if err != nil {
			return err
		}
		cmore, err := f.conn.FinalCheckForResponses()
		if err != nil {
			return err
		}
		if more || cmore {
			continue
		}
		p, err := f.ev.Wait(ctx)
		if err != nil {
			return err
		}
		// A fired port stays masked until written back (Xen's rule): the
		// rings are re-checked at the top of the loop, so unmask now.
		if err := f.ev.Unmask(p); err != nil {
			return err
		}
	}
}

// Wait waits for the response to id and removes it.
func (f *Front) Wait(ctx context.Context, id uint16) (usbif.URBResponse, error) {
	err := f.waitFor(ctx, func() bool { return len(f.got[id]) > 0 })
	if err != nil {
		return usbif.URBResponse{}, err
	}
	rsp := f.got[id][0]
	if f.got[id] = f.got[id][1:]; len(f.got[id]) == 0 {
		delete(f.got, id)
	}
	return rsp, nil
}

// ConnEvent waits for the next hot-plug event.
func (f *Front) ConnEvent(ctx context.Context) (usbif.ConnResponse, error) {
	err := f.waitFor(ctx, func() bool { return len(f.events) > 0 })
	if err != nil {
		return usbif.ConnResponse{}, err
	}
	ev := f.events[0]
	f.events = f.events[1:]
	return ev, nil
}

// Buffer is a transfer buffer granted to the backend the way xen-hcd
// grants it: whole pages, read-only for OUT, the data starting at
// DataOffset and split into per-page segments.
type Buffer struct {
	g    grant.Grant
	Data []byte // the n bytes of data inside the granted pages
	Segs []usbif.Segment
}

// NewBuffer grants a buffer of n bytes.
func (f *Front) NewBuffer(n int, in bool) (*Buffer, error) {
	if n == 0 {
		return &Buffer{}, nil
	}
	pages := (DataOffset + n + grant.PageSize - 1) / grant.PageSize
	g, err := f.g.Grant(f.backDom, pages, in)
	if err != nil {
		return nil, err
	}
	b := &Buffer{g: g, Data: g.Bytes()[DataOffset : DataOffset+n]}
	off, left := DataOffset, n
	for i := 0; left > 0; i++ {
		l := min(grant.PageSize-off, left)
		b.Segs = append(b.Segs, usbif.Segment{Gref: uint32(g.Refs()[i]), Offset: uint16(off), Length: uint16(l)})
		left -= l
		off = 0
	}
	return b, nil
}

// End revokes the buffer's grants: it fails if the backend still maps
// them, which xen-hcd treats as a fatal backend bug.
func (b *Buffer) End() error {
	if b.g == nil {
		return nil
	}
	return b.g.End()
}

// Request builds a request over a buffer.
func Request(id uint16, pipe usbif.Pipe, b *Buffer) usbif.URBRequest {
	r := usbif.URBRequest{ID: id, Pipe: pipe}
	if b != nil {
		r.NrBufferSegs = uint16(len(b.Segs))
		copy(r.Seg[:], b.Segs)
		r.BufferLength = uint16(len(b.Data))
	}
	return r
}

// Do runs one transfer synchronously: OUT data (or room for IN data) in
// a fresh buffer, submit, wait, end the grants. It returns the response
// and, for IN, the bytes received.
func (f *Front) Do(ctx context.Context, pipe usbif.Pipe, setup *usbif.SetupPacket, out []byte, inLen int, flags uint16) (usbif.URBResponse, []byte, error) {
	id, err := f.AllocID()
	if err != nil {
		return usbif.URBResponse{}, nil, err
	}
	defer f.FreeID(id)
	in := pipe.In()
	n := len(out)
	if in {
		n = inLen
	}
	buf, err := f.NewBuffer(n, in)
	if err != nil {
		return usbif.URBResponse{}, nil, err
	}
	copy(buf.Data, out)
	req := Request(id, pipe, buf)
	req.TransferFlags = flags
	if setup != nil {
		req.SetSetup(*setup)
	}
	if err := f.Submit(&req); err != nil {
		return usbif.URBResponse{}, nil, err
	}
	rsp, err := f.Wait(ctx, id)
	if err != nil {
		return rsp, nil, err
	}
	var got []byte
	if in && rsp.ActualLength > 0 {
		got = append([]byte(nil), buf.Data[:min(int(rsp.ActualLength), len(buf.Data))]...)
	}
	if err := buf.End(); err != nil {
		return rsp, got, fmt.Errorf("backend didn't release grant: %w", err)
	}
	return rsp, got, nil
}

// Control is a control transfer to addr on port.
func (f *Front) Control(ctx context.Context, port, addr uint8, s usbif.SetupPacket, out []byte) (usbif.URBResponse, []byte, error) {
	pipe := usbif.NewPipe(port, addr, 0, s.In(), usbif.TypeCtrl)
	return f.Do(ctx, pipe, &s, out, int(s.Length), 0)
}

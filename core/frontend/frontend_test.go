package frontend

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend"
	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/msc"
)

// events collects conn-ring events.
type events struct {
	mu  sync.Mutex
	got []usbif.ConnResponse
	c   chan struct{}
}

func newEvents() *events { return &events{c: make(chan struct{}, 64)} }

func (e *events) on(port uint8, speed usbif.Speed) {
	e.mu.Lock()
	e.got = append(e.got, usbif.ConnResponse{Port: port, Speed: speed})
	e.mu.Unlock()
	e.c <- struct{}{}
}

func (e *events) next(t *testing.T, ctx context.Context) usbif.ConnResponse {
	t.Helper()
	select {
	case <-e.c:
	case <-ctx.Done():
		t.Fatal("no conn event")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.got[0]
	e.got = e.got[1:]
	return ev
}

// do submits u and waits for it.
func do(t *testing.T, ctx context.Context, f *Frontend, u *URB) *URB {
	t.Helper()
	done := make(chan *URB, 1)
	u.Done = done
	if err := f.Submit(u); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		return r
	case <-ctx.Done():
		t.Fatal("URB never completed")
	}
	return nil
}

// withEngine connects a Frontend to our backend engine over the
// in-process hypervisor, with an emulated disk on port 1.
func withEngine(t *testing.T) (*Frontend, *events, *fronttest.Mem, context.Context) {
	t.Helper()
	mem := fronttest.NewMem()
	ev := newEvents()
	f, rings, err := New(Config{BackDom: 0, NumPorts: 4, Granter: mem.Granter(), Events: mem.FrontEvents(), OnConn: ev.on})
	if err != nil {
		t.Fatal(err)
	}
	e, err := backend.New(backend.Config{Dom: 1, NumPorts: 4, Mapper: mem.Mapper(), Events: mem.BackEvents()}, rings)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	ec, fc := make(chan error, 1), make(chan error, 1)
	go func() { ec <- e.Run(ctx) }()
	go func() { fc <- f.Run(ctx) }()
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, make([]byte, 4<<20), 0o600)
	disk, err := msc.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Plug(1, disk); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		<-ec
		<-fc
		if err := f.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if mem.Mapped != 0 {
			t.Errorf("%d grants still mapped", mem.Mapped)
		}
	})
	return f, ev, mem, ctx
}

func ctrl(port, addr uint8, s usbif.SetupPacket, buf []byte) *URB {
	return &URB{Port: port, Addr: addr, Type: usbif.TypeCtrl, Setup: s, Buffer: buf}
}

func TestAgainstOurBackendEnumerateAndPipelinedDisk(t *testing.T) {
	f, ev, _, ctx := withEngine(t)
	if e := ev.next(t, ctx); e.Port != 1 || e.Speed != usbif.SpeedHigh {
		t.Fatalf("plug event %+v", e)
	}
	u := do(t, ctx, f, ctrl(1, 0, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: 0x100, Length: 18}, make([]byte, 18)))
	if u.Status != 0 || u.Actual != 18 || u.Buffer[8] != 0x09 || u.Buffer[9] != 0x12 {
		t.Fatalf("GET_DESCRIPTOR: %v %d % x", u.Status, u.Actual, u.Buffer)
	}
	if u := do(t, ctx, f, ctrl(1, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 3}, nil)); u.Status != 0 {
		t.Fatal(u.Status)
	}
	if u := do(t, ctx, f, ctrl(1, 3, usbif.SetupPacket{Request: usbif.ReqSetConfiguration, Value: 1}, nil)); u.Status != 0 {
		t.Fatal(u.Status)
	}
	// 1 MiB written and read back with WRITE(10)/READ(10), many URBs in
	// flight at once (each command's CBW, data, CSW are in order on their
	// endpoints; the commands are serial, the data is 64 KiB URBs).
	b := &bot{t: t, f: f, ctx: ctx, port: 1, addr: 3}
	data := make([]byte, 1<<20)
	rand.Read(data)
	b.write(0, data)
	got := b.read(0, len(data))
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	st := f.Stats()
	if st.BytesOut < 1<<20 || st.BytesIn < 1<<20 || st.Completed != st.Submitted {
		t.Fatalf("stats %+v", st)
	}
}

// bot is a minimal Bulk-Only host over the Frontend for tests.
type bot struct {
	t    *testing.T
	f    *Frontend
	ctx  context.Context
	port uint8
	addr uint8
	tag  uint32
}

func (b *bot) cbw(n int, in bool, cdb []byte) []byte {
	c := make([]byte, 31)
	binary.LittleEndian.PutUint32(c, 0x43425355)
	b.tag++
	binary.LittleEndian.PutUint32(c[4:], b.tag)
	binary.LittleEndian.PutUint32(c[8:], uint32(n))
	if in {
		c[12] = 0x80
	}
	c[14] = byte(len(cdb))
	copy(c[15:], cdb)
	return c
}

func (b *bot) bulk(ep uint8, buf []byte) *URB {
	return &URB{Port: b.port, Addr: b.addr, Endpoint: ep, Type: usbif.TypeBulk, Buffer: buf}
}

// command runs one SCSI command: CBW, data in 64 KiB URBs all submitted
// at once (up to the ring's 16), CSW.
func (b *bot) command(cdb []byte, data []byte, in bool) {
	t, ctx, f := b.t, b.ctx, b.f
	if u := do(t, ctx, f, b.bulk(0x02, b.cbw(len(data), in, cdb))); u.Status != 0 {
		t.Fatalf("CBW: %v", u.Status)
	}
	done := make(chan *URB, 64)
	var urbs []*URB
	ep := uint8(0x02)
	if in {
		ep = 0x81
	}
	for off := 0; off < len(data); off += MaxTransfer {
		u := b.bulk(ep, data[off:min(off+MaxTransfer, len(data))])
		u.Done = done
		urbs = append(urbs, u)
		if err := f.Submit(u); err != nil {
			t.Fatal(err)
		}
	}
	for range urbs {
		select {
		case u := <-done:
			if u.Status != 0 || u.Actual != len(u.Buffer) {
				t.Fatalf("data URB: %v %d/%d", u.Status, u.Actual, len(u.Buffer))
			}
		case <-ctx.Done():
			t.Fatal("data URB never completed")
		}
	}
	csw := do(t, ctx, f, b.bulk(0x81, make([]byte, 13)))
	if csw.Status != 0 || csw.Actual != 13 || csw.Buffer[12] != 0 {
		t.Fatalf("CSW: %v % x", csw.Status, csw.Buffer)
	}
}

func (b *bot) write(lba uint32, data []byte) {
	cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(len(data)/512))
	b.command(cdb, data, false)
}

func (b *bot) read(lba uint32, n int) []byte {
	cdb := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(n/512))
	data := make([]byte, n)
	b.command(cdb, data, true)
	return data
}

func TestSubmitRefusesWhatTheRingCannotCarry(t *testing.T) {
	f, _, _, _ := withEngine(t)
	done := make(chan *URB, 1)
	for name, u := range map[string]*URB{
		"port 0":          {Port: 0, Type: usbif.TypeBulk, Done: done},
		"port 5 of 4":     {Port: 5, Type: usbif.TypeBulk, Done: done},
		"address 128":     {Port: 1, Addr: 128, Type: usbif.TypeBulk, Done: done},
		"too big":         {Port: 1, Type: usbif.TypeBulk, Buffer: make([]byte, MaxTransfer+1), Done: done},
		"wLength differs": {Port: 1, Type: usbif.TypeCtrl, Setup: usbif.SetupPacket{Length: 4}, Buffer: make([]byte, 8), Done: done},
		"iso no packets":  {Port: 1, Type: usbif.TypeIsoc, Buffer: make([]byte, 8), Done: done},
		"iso packet out":  {Port: 1, Type: usbif.TypeIsoc, Buffer: make([]byte, 8), Packets: []stub.IsoPacket{{Offset: 4, Length: 8}}, Done: done},
		"no Done":         {Port: 1, Type: usbif.TypeBulk},
	} {
		if err := f.Submit(u); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// hostile is a scripted backend: it maps the frontend's rings and
// answers however a test tells it to.
type hostile struct {
	t    *testing.T
	mem  *fronttest.Mem
	f    *Frontend
	urb  *ring.Back[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte]
	conn *ring.Back[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte]
	page []byte
	port evtchn.Port
	ctx  context.Context
	runc chan error
	ev   *events
}

func newHostile(t *testing.T) *hostile {
	t.Helper()
	mem := fronttest.NewMem()
	ev := newEvents()
	f, rings, err := New(Config{BackDom: 0, NumPorts: 4, Granter: mem.Granter(), Events: mem.FrontEvents(), OnConn: ev.on})
	if err != nil {
		t.Fatal(err)
	}
	m, err := mem.Mapper().Map(1, []grant.Ref{grant.Ref(rings.URBRingRef), grant.Ref(rings.ConnRingRef)}, true)
	if err != nil {
		t.Fatal(err)
	}
	p, err := mem.BackEvents().BindInterdomain(1, evtchn.Port(rings.EventChannel))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	h := &hostile{t: t, mem: mem, f: f, page: m.Bytes(), port: p, ctx: ctx, runc: make(chan error, 1), ev: ev,
		urb:  ring.NewBack[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](m.Bytes()[:ring.PageSize]),
		conn: ring.NewBack[[usbif.ConnRequestSize]byte, [usbif.ConnResponseSize]byte](m.Bytes()[ring.PageSize:])}
	go func() { h.runc <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-h.runc
		m.Unmap()
		f.Close()
	})
	return h
}

// take waits for the frontend's next request and returns it decoded.
func (h *hostile) take() usbif.URBRequest {
	h.t.Helper()
	var raw [usbif.URBRequestSize]byte
	for i := 0; ; i++ {
		h.urb.Poll()
		if h.urb.NextRequest(&raw) {
			var r usbif.URBRequest
			r.Decode(&raw)
			return r
		}
		if i > 2000 {
			h.t.Fatal("no request from the frontend")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (h *hostile) respond(r usbif.URBResponse) {
	var w [usbif.URBResponseSize]byte
	r.Encode(&w)
	if err := h.urb.PutResponse(&w); err != nil {
		h.t.Fatal(err)
	}
	h.urb.PushResponses()
	h.mem.BackEvents().Notify(h.port)
}

// rawRespond writes a response into the next slot and publishes it,
// bypassing the ring's own bookkeeping.
func (h *hostile) rawRespond(r usbif.URBResponse) {
	var w [usbif.URBResponseSize]byte
	r.Encode(&w)
	prod := ring.ReadHeader(h.page).RspProd
	l := ring.NewLayout(usbif.URBRequestSize)
	copy(h.page[l.SlotOffset(prod):], w[:])
	ring.StoreIndex(h.page, ring.OffRspProd, prod+1)
	h.mem.BackEvents().Notify(h.port)
}

func (h *hostile) connEvent(port uint8, speed usbif.Speed) {
	var c [usbif.ConnRequestSize]byte
	h.conn.Poll()
	if !h.conn.NextRequest(&c) {
		h.t.Fatal("no conn credit")
	}
	var w [usbif.ConnResponseSize]byte
	(&usbif.ConnResponse{Port: port, Speed: speed}).Encode(&w)
	h.conn.PutResponse(&w)
	h.conn.PushResponses()
	h.mem.BackEvents().Notify(h.port)
}

// latched waits for Run to end with the protocol error.
func (h *hostile) latched(want string) {
	h.t.Helper()
	select {
	case err := <-h.runc:
		h.runc <- err // for the cleanup
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
			h.t.Fatalf("Run ended with %v, want %q", err, want)
		}
	case <-h.ctx.Done():
		h.t.Fatalf("no protocol error (%s)", want)
	}
	if err := h.f.Submit(&URB{Port: 1, Type: usbif.TypeBulk, Endpoint: 0x81, Done: make(chan *URB, 1)}); !errors.Is(err, ErrProtocol) {
		h.t.Fatalf("Submit after the error: %v", err)
	}
}

func inURB(n int) (*URB, chan *URB) {
	done := make(chan *URB, 1)
	return &URB{Port: 1, Addr: 2, Endpoint: 0x81, Type: usbif.TypeBulk, Buffer: make([]byte, n), Done: done}, done
}

func TestHostileBackends(t *testing.T) {
	for _, tc := range []struct {
		name string
		act  func(h *hostile, r usbif.URBRequest)
		want string
	}{
		{"response id out of range", func(h *hostile, r usbif.URBRequest) { h.respond(usbif.URBResponse{ID: 40}) }, "Illegal data on urb-ring"},
		{"response for an id not in flight", func(h *hostile, r usbif.URBRequest) { h.respond(usbif.URBResponse{ID: r.ID + 1}) }, "Illegal request id"},
		{"duplicate response", func(h *hostile, r usbif.URBRequest) {
			// Two requests out, the first answered twice.
			second, _ := inURB(10)
			h.f.Submit(second)
			h.take()
			h.respond(usbif.URBResponse{ID: r.ID})
			h.respond(usbif.URBResponse{ID: r.ID})
		}, "Illegal request id"},
		{"more responses than requests", func(h *hostile, r usbif.URBRequest) {
			h.respond(usbif.URBResponse{ID: r.ID})
			h.rawRespond(usbif.URBResponse{ID: r.ID}) // our ring refuses it; a lying backend writes the page itself
		}, "Illegal index on urb-ring"},
		{"unlink response never asked", func(h *hostile, r usbif.URBRequest) { h.respond(usbif.URBResponse{ID: Slots + 3}) }, "Illegal request id"},
		{"producer overflow", func(h *hostile, r usbif.URBRequest) {
			ring.StoreIndex(h.page, ring.OffRspProd, 17)
			h.mem.BackEvents().Notify(h.port)
		}, "Illegal index on urb-ring"},
		{"conn event port 0", func(h *hostile, r usbif.URBRequest) { h.connEvent(0, usbif.SpeedHigh) }, "Illegal data on conn-ring"},
		{"conn event port 32", func(h *hostile, r usbif.URBRequest) { h.connEvent(32, usbif.SpeedHigh) }, "Illegal data on conn-ring"},
		{"conn event speed 7", func(h *hostile, r usbif.URBRequest) { h.connEvent(1, 7) }, "Illegal data on conn-ring"},
		{"conn producer overflow", func(h *hostile, r usbif.URBRequest) {
			ring.StoreIndex(h.page[ring.PageSize:], ring.OffRspProd, 600)
			h.mem.BackEvents().Notify(h.port)
		}, "Illegal index on conn-ring"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHostile(t)
			u, done := inURB(100)
			if err := h.f.Submit(u); err != nil {
				t.Fatal(err)
			}
			r := h.take()
			tc.act(h, r)
			h.latched(tc.want)
			// The URB in flight is not left hanging.
			select {
			case got := <-done:
				if tc.name != "duplicate response" && tc.name != "more responses than requests" && got.Status != usbif.StatusShutdown {
					t.Fatalf("in-flight URB: %v", got.Status)
				}
			case <-h.ctx.Done():
				t.Fatal("in-flight URB never completed")
			}
		})
	}
}

func TestLyingLengthsAndStatusesAreTamed(t *testing.T) {
	h := newHostile(t)
	u, done := inURB(100)
	h.f.Submit(u)
	r := h.take()
	// The backend writes 4096 bytes into the bounce page and claims
	// 70000; only the 100 asked for reach the caller.
	seg := r.Seg[0]
	if r.NrBufferSegs != 1 || seg.Length != 100 || seg.Offset != 0 {
		t.Fatalf("segments %+v", r.Seg[:r.NrBufferSegs])
	}
	h.respond(usbif.URBResponse{ID: r.ID, Status: -1234, ActualLength: 70000})
	got := <-done
	if got.Actual != 100 || got.Status != usbif.StatusShutdown {
		t.Fatalf("actual %d status %v", got.Actual, got.Status)
	}
	u, done = inURB(100)
	h.f.Submit(u)
	r = h.take()
	h.respond(usbif.URBResponse{ID: r.ID, Status: usbif.StatusStall, ActualLength: -5})
	if got := <-done; got.Actual != 0 || got.Status != usbif.StatusStall {
		t.Fatalf("actual %d status %v", got.Actual, got.Status)
	}
	if h.f.Err() != nil {
		t.Fatalf("taming is not an error: %v", h.f.Err())
	}
}

// A backend that never answers: the caller unlinks; the unlink goes on
// the ring with its own id and the target's id; nothing is reused until
// the backend answers; a queued URB beyond 16 waits, and can be unlinked
// locally.
func TestSilentBackendUnlinkAndQueue(t *testing.T) {
	h := newHostile(t)
	done := make(chan *URB, 32)
	var urbs []*URB
	for i := 0; i < Slots+2; i++ {
		u := &URB{Port: 1, Addr: 2, Endpoint: 0x81, Type: usbif.TypeBulk, Buffer: make([]byte, 8), Done: done}
		if err := h.f.Submit(u); err != nil {
			t.Fatal(err)
		}
		urbs = append(urbs, u)
	}
	seen := map[uint16]bool{}
	for i := 0; i < Slots; i++ {
		r := h.take()
		if r.ID >= Slots || seen[r.ID] {
			t.Fatalf("id %d", r.ID)
		}
		seen[r.ID] = true
	}
	// The 17th is queued: unlinking it completes it here.
	h.f.Unlink(urbs[Slots])
	if got := <-done; got != urbs[Slots] || got.Status != usbif.StatusConnReset {
		t.Fatalf("queued unlink: %v", got.Status)
	}
	// Unlink an in-flight one: the ring is full, so the unlink waits for
	// room; answer one other URB to make room.
	h.f.Unlink(urbs[0])
	h.respond(usbif.URBResponse{ID: uint16(urbs[5].slot), ActualLength: 8})
	<-done
	var unlinkReq usbif.URBRequest
	for {
		r := h.take()
		if r.Pipe.Unlink() {
			unlinkReq = r
			break
		}
		// The 18th URB took the freed slot.
	}
	if unlinkReq.ID != Slots+uint16(urbs[0].slot) || unlinkReq.UnlinkID() != uint16(urbs[0].slot) {
		t.Fatalf("unlink id %d for %d", unlinkReq.ID, unlinkReq.UnlinkID())
	}
	// Answer target then unlink, as QEMU does.
	h.respond(usbif.URBResponse{ID: unlinkReq.UnlinkID(), Status: usbif.StatusIOError})
	h.respond(usbif.URBResponse{ID: unlinkReq.ID})
	if got := <-done; got != urbs[0] || got.Status != usbif.StatusIOError {
		t.Fatalf("unlinked: %v", got.Status)
	}
	if h.f.Err() != nil {
		t.Fatal(h.f.Err())
	}
}

// Conn events: validated ones reach OnConn in order and every consumed
// credit is re-posted (the ring stays full of credits).
func TestConnEventsAndCredits(t *testing.T) {
	h := newHostile(t)
	for i := 0; i < 600; i++ { // more than the ring holds: credits come back
		h.connEvent(uint8(1+i%4), usbif.Speed(i%4))
		if e := h.ev.next(t, h.ctx); e.Port != uint8(1+i%4) || e.Speed != usbif.Speed(i%4) {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
	for i := 0; ; i++ {
		if n, _ := h.conn.Poll(); n == usbif.ConnRingSize {
			break
		}
		if i > 1000 {
			t.Fatal("credits not re-posted")
		}
		time.Sleep(time.Millisecond)
	}
}

var _ = xenbus.FrontendRings{}

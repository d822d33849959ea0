package backend

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/stub"
)

// fakeDev is a device whose behaviour the test scripts: control requests
// answer from a device descriptor, bulk IN returns a pattern (or is held
// until cancelled), bulk OUT is recorded.
type fakeDev struct {
	mu       sync.Mutex
	hold     bool
	noFill   bool // benchmarks: IN data is whatever the buffer holds
	pending  []*stub.Transfer
	out      []byte
	resets   int
	closes   int
	config   uint8
	iface    [2]uint8
	halts    []uint8
	controls []usbif.SetupPacket
	isoOut   [][]byte
}

var devDesc = []byte{18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1}

func (d *fakeDev) DeviceDescriptor() []byte { return devDesc }
func (d *fakeDev) Identity() stub.Identity  { return stub.IdentityOf(devDesc) }
func (d *fakeDev) Speed() usbif.Speed       { return usbif.SpeedHigh }
func (d *fakeDev) Submit(t *stub.Transfer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case t.Type == usbif.TypeCtrl:
		d.controls = append(d.controls, t.Setup)
		if t.Setup.Request == usbif.ReqGetDescriptor && t.Setup.Value>>8 == usbif.DescDevice {
			n := copy(t.Buffer, devDesc)
			t.Complete(usbif.StatusOK, n)
			return nil
		}
		t.Complete(usbif.StatusOK, 0)
	case d.hold:
		d.pending = append(d.pending, t)
	case t.Type == usbif.TypeIsoc:
		// Packet i: IN fills length-i bytes of 0x40+i; packet 1 fails.
		// OUT records each packet.
		sum := 0
		for i := range t.Packets {
			p := &t.Packets[i]
			if t.Endpoint&0x80 == 0 {
				d.isoOut = append(d.isoOut, append([]byte(nil), t.Buffer[p.Offset:p.Offset+p.Length]...))
				p.Actual = p.Length
			} else {
				p.Actual = max(p.Length-i, 0)
				for j := 0; j < p.Actual; j++ {
					t.Buffer[p.Offset+j] = byte(0x40 + i)
				}
			}
			if i == 1 {
				p.Actual, p.Status = 0, usbif.StatusIOError
				t.ErrorCount++
			}
			sum += p.Actual
		}
		t.StartFrame = 7
		t.Complete(usbif.StatusOK, sum)
	case t.Endpoint == 0x83: // a device with less to say than asked, under SHORT_NOT_OK
		copy(t.Buffer, "short")
		st := usbif.StatusOK
		if t.ShortNotOK {
			st = usbif.StatusRemoteIO
		}
		t.Complete(st, 5)
	case t.Endpoint&0x80 != 0:
		for i := 0; i < len(t.Buffer) && !d.noFill; i++ {
			t.Buffer[i] = byte(i * 7)
		}
		t.Complete(usbif.StatusOK, len(t.Buffer))
	default:
		d.out = append(d.out, t.Buffer...)
		t.Complete(usbif.StatusOK, len(t.Buffer))
	}
	return nil
}
func (d *fakeDev) Cancel(t *stub.Transfer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, p := range d.pending {
		if p == t {
			d.pending = append(d.pending[:i], d.pending[i+1:]...)
			t.Complete(usbif.StatusConnReset, 0)
			return
		}
	}
}
func (d *fakeDev) Reset() error { d.resets++; return nil }
func (d *fakeDev) SetConfiguration(v uint8) error {
	d.config = v
	return nil
}
func (d *fakeDev) SetInterface(i, a uint8) error {
	if i > 1 {
		return stub.ErrStall
	}
	d.iface[i] = a
	return nil
}
func (d *fakeDev) ClearHalt(ep uint8) error { d.halts = append(d.halts, ep); return nil }
func (d *fakeDev) Close() error             { d.closes++; return nil }

type rig struct {
	t      *testing.T
	mem    *fronttest.Mem
	front  *fronttest.Front
	e      *Engine
	ctx    context.Context
	cancel context.CancelFunc
	errc   chan error
	dev    *fakeDev
	once   sync.Once
}

// stop ends the engine and checks it left no grant mapped.
func (r *rig) stop(t testing.TB) {
	r.once.Do(func() {
		r.cancel()
		<-r.errc
		if r.mem.Mapped != 0 {
			t.Errorf("%d mappings left after the engine stopped", r.mem.Mapped)
		}
	})
}

func newRig(t *testing.T) *rig {
	t.Helper()
	mem := fronttest.NewMem()
	front, rings, err := fronttest.New(mem.Granter(), mem.FrontEvents(), 0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Dom: 1, DevID: 0, NumPorts: 4, Mapper: mem.Mapper(), Events: mem.BackEvents()}, rings)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	r := &rig{t: t, mem: mem, front: front, e: e, ctx: ctx, cancel: cancel, errc: make(chan error, 1), dev: &fakeDev{}}
	go func() { r.errc <- e.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *rig) plug() {
	r.t.Helper()
	if err := r.e.Plug(1, r.dev); err != nil {
		r.t.Fatal(err)
	}
	ev, err := r.front.ConnEvent(r.ctx)
	if err != nil || ev.Port != 1 || ev.Speed != usbif.SpeedHigh {
		r.t.Fatalf("plug event %+v %v", ev, err)
	}
}

func (r *rig) control(port, addr uint8, s usbif.SetupPacket, out []byte) (usbif.URBResponse, []byte) {
	r.t.Helper()
	rsp, in, err := r.front.Control(r.ctx, port, addr, s, out)
	if err != nil {
		r.t.Fatal(err)
	}
	return rsp, in
}

var getDevice = usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescDevice << 8, Length: 64}

// enumerate does what Linux does to a new device through xen-hcd.
func (r *rig) enumerate(addr uint8) {
	r.t.Helper()
	rsp, in := r.control(1, 0, getDevice, nil)
	if rsp.Status != usbif.StatusOK || !bytes.Equal(in, devDesc) {
		r.t.Fatalf("GET_DESCRIPTOR at address 0: %+v % x", rsp, in)
	}
	if rsp, _ := r.control(1, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: uint16(addr)}, nil); rsp.Status != usbif.StatusOK {
		r.t.Fatalf("SET_ADDRESS: %+v", rsp)
	}
}

func TestEnumerateAndTransferLikeXenHCD(t *testing.T) {
	r := newRig(t)
	r.plug()
	if r.dev.resets != 1 {
		t.Errorf("device reset at attach: %d", r.dev.resets)
	}
	r.enumerate(2)
	if rsp, in := r.control(1, 2, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescDevice << 8, Length: 18}, nil); rsp.ActualLength != 18 || !bytes.Equal(in, devDesc) {
		t.Fatalf("GET_DESCRIPTOR at address 2: %+v", rsp)
	}
	// The intercepted requests reach the device through its own calls,
	// not as control transfers.
	r.control(1, 2, usbif.SetupPacket{Request: usbif.ReqSetConfiguration, Value: 1}, nil)
	r.control(1, 2, usbif.SetupPacket{RequestType: 0x01, Request: usbif.ReqSetInterface, Index: 1, Value: 2}, nil)
	r.control(1, 2, usbif.SetupPacket{RequestType: 0x02, Request: usbif.ReqClearFeature, Value: usbif.FeatureEndpointHalt, Index: 0x81}, nil)
	if rsp, _ := r.control(1, 2, usbif.SetupPacket{RequestType: 0x01, Request: usbif.ReqSetInterface, Index: 9}, nil); rsp.Status != usbif.StatusStall {
		t.Errorf("SET_INTERFACE the device refuses: %+v", rsp)
	}
	if r.dev.config != 1 || r.dev.iface[1] != 2 || len(r.dev.halts) != 1 || r.dev.halts[0] != 0x81 {
		t.Errorf("intercepts: config %d iface %v halts %v", r.dev.config, r.dev.iface, r.dev.halts)
	}
	for _, s := range r.dev.controls {
		if s.Request == usbif.ReqSetAddress || s.Request == usbif.ReqSetConfiguration {
			t.Errorf("intercepted request reached the device as a transfer: %v", s)
		}
	}
	// A class request that happens to use bRequest 5 is not SET_ADDRESS (§11 #5).
	r.control(1, 2, usbif.SetupPacket{RequestType: 0x21, Request: 5, Value: 9}, nil)
	if last := r.dev.controls[len(r.dev.controls)-1]; last.RequestType != 0x21 {
		t.Errorf("class request 5 swallowed: %v", last)
	}
	// Bulk OUT of 10000 bytes at an odd offset (3 segments), bulk IN of 60000 (15 segments).
	data := make([]byte, 10000)
	for i := range data {
		data[i] = byte(i ^ 0x5a)
	}
	rsp, _, err := r.front.Do(r.ctx, usbif.NewPipe(1, 2, 2, false, usbif.TypeBulk), nil, data, 0, 0)
	if err != nil || rsp.Status != 0 || rsp.ActualLength != 10000 || !bytes.Equal(r.dev.out, data) {
		t.Fatalf("bulk OUT: %+v %v, device got %d bytes", rsp, err, len(r.dev.out))
	}
	rsp, in, err := r.front.Do(r.ctx, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), nil, nil, 60000, 0)
	if err != nil || rsp.ActualLength != 60000 || in[59999] != byte(59999*7%256) {
		t.Fatalf("bulk IN: %+v %v", rsp, err)
	}
	// A short IN under SHORT_NOT_OK is status 0 with the short length, as
	// QEMU answers: xen-hcd would read any other status as -ESHUTDOWN.
	rsp, in, err = r.front.Do(r.ctx, usbif.NewPipe(1, 2, 3, true, usbif.TypeBulk), nil, nil, 512, usbif.ShortNotOK)
	if err != nil || rsp.Status != usbif.StatusOK || rsp.ActualLength != 5 || string(in) != "short" {
		t.Fatalf("short IN under SHORT_NOT_OK: %+v %q %v", rsp, in, err)
	}
	st := r.e.Stats()
	if st.BytesIn != 60000+18+18+5 || st.BytesOut != 10000 || st.InFlight != 0 {
		t.Errorf("stats %+v", st)
	}
}

func TestUnlinkAnswersTargetThenUnlink(t *testing.T) {
	r := newRig(t)
	r.plug()
	r.enumerate(3)
	r.dev.hold = true
	buf, _ := r.front.NewBuffer(512, true)
	req := fronttest.Request(4, usbif.NewPipe(1, 3, 1, true, usbif.TypeBulk), buf)
	r.front.Submit(&req)
	un := usbif.URBRequest{ID: 5, Pipe: req.Pipe.WithUnlink()}
	un.SetUnlinkID(4)
	r.front.Submit(&un)
	target, err := r.front.Wait(r.ctx, 4)
	if err != nil || target.Status != usbif.StatusConnReset {
		t.Fatalf("target %+v %v", target, err)
	}
	if rsp, err := r.front.Wait(r.ctx, 5); err != nil || rsp.Status != usbif.StatusOK {
		t.Fatalf("unlink %+v %v", rsp, err)
	}
	if err := buf.End(); err != nil {
		t.Fatalf("grants still in use after the answer: %v", err)
	}
	// Unlinking something no longer in flight: OK; for an unknown address: NODEV.
	un = usbif.URBRequest{ID: 6, Pipe: req.Pipe.WithUnlink()}
	un.SetUnlinkID(4)
	r.front.Submit(&un)
	if rsp, _ := r.front.Wait(r.ctx, 6); rsp.Status != usbif.StatusOK {
		t.Errorf("unlink of a finished request: %+v", rsp)
	}
	un = usbif.URBRequest{ID: 7, Pipe: usbif.NewPipe(1, 99, 1, true, usbif.TypeBulk).WithUnlink()}
	r.front.Submit(&un)
	if rsp, _ := r.front.Wait(r.ctx, 7); rsp.Status != usbif.StatusNoDev {
		t.Errorf("unlink at an unknown address: %+v", rsp)
	}
}

func TestUnplugAnswersInFlightBeforeSpeedZero(t *testing.T) {
	r := newRig(t)
	r.plug()
	r.enumerate(2)
	r.dev.hold = true
	before := ring.ReadHeader(r.front.URBPage()).RspProd
	var bufs []*fronttest.Buffer
	for id := uint16(0); id < 3; id++ {
		b, _ := r.front.NewBuffer(4096, true)
		bufs = append(bufs, b)
		req := fronttest.Request(id, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), b)
		r.front.Submit(&req)
	}
	// Wait until the engine handed all three to the device (Stats is a
	// round trip through the engine's goroutine), then unplug.
	for r.e.Stats().InFlight != 3 {
		if r.ctx.Err() != nil {
			t.Fatal("requests never reached the device")
		}
	}
	if err := r.e.Unplug(1); err != nil {
		t.Fatal(err)
	}
	ev, err := r.front.ConnEvent(r.ctx)
	if err != nil || ev.Port != 1 || ev.Speed != usbif.SpeedNone {
		t.Fatalf("unplug event %+v %v", ev, err)
	}
	// By the time the speed-0 event is visible, all three answers are on
	// the urb ring (the engine pushes it first). The frontend reads the two
	// rings one after the other, so check the ring, not what it collected.
	if n := ring.ReadHeader(r.front.URBPage()).RspProd - before; n != 3 {
		t.Fatalf("%d of 3 in-flight answers were on the ring before the speed-0 event", n)
	}
	for id := uint16(0); id < 3; id++ {
		if rsp, err := r.front.Wait(r.ctx, id); err != nil || rsp.Status != usbif.StatusConnReset {
			t.Errorf("in-flight %d: %+v %v", id, rsp, err)
		}
		if err := bufs[id].End(); err != nil {
			t.Error(err)
		}
	}
	if r.dev.closes != 1 {
		t.Errorf("device closed %d times", r.dev.closes)
	}
	// The old address leads nowhere now.
	if rsp, _ := r.control(1, 2, getDevice, nil); rsp.Status != usbif.StatusNoDev {
		t.Errorf("request to the old address: %+v", rsp)
	}
	// Replug works.
	r.dev = &fakeDev{}
	r.plug()
	r.enumerate(2)
}

func TestHostileRequests(t *testing.T) {
	r := newRig(t)
	r.plug()
	r.enumerate(2)
	bulkIn := usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk)
	for _, tc := range []struct {
		name string
		mut  func(*usbif.URBRequest)
		want usbif.Status
	}{
		{"port 0 at address 0", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(0, 0, 0, true, usbif.TypeCtrl)
			q.SetSetup(getDevice)
		}, usbif.StatusNoDev},
		{"port 31 of 4", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(31, 0, 0, true, usbif.TypeCtrl)
			q.SetSetup(getDevice)
		}, usbif.StatusNoDev},
		{"empty port", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(3, 0, 0, true, usbif.TypeCtrl)
			q.SetSetup(getDevice)
		}, usbif.StatusNoDev},
		{"17 segments", func(q *usbif.URBRequest) { q.NrBufferSegs = 17 }, usbif.StatusShutdown},
		{"segment crosses the page", func(q *usbif.URBRequest) { q.Seg[0].Offset = 4000; q.Seg[0].Length = 200 }, usbif.StatusShutdown},
		{"bad grant ref", func(q *usbif.URBRequest) { q.Seg[0].Gref = 99999 }, usbif.StatusShutdown},
		{"SET_ADDRESS 128", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(1, 0, 0, false, usbif.TypeCtrl)
			q.NrBufferSegs = 0
			q.SetSetup(usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 128})
		}, usbif.StatusInval},
		{"SET_ADDRESS 65535", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(1, 0, 0, false, usbif.TypeCtrl)
			q.NrBufferSegs = 0
			q.SetSetup(usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 65535})
		}, usbif.StatusInval},
		{"other request to address 0", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(1, 0, 0, false, usbif.TypeCtrl)
			q.NrBufferSegs = 0
			q.SetSetup(usbif.SetupPacket{Request: usbif.ReqSetConfiguration, Value: 1})
		}, usbif.StatusInval},
		{"bulk to address 0", func(q *usbif.URBRequest) { q.Pipe = usbif.NewPipe(1, 0, 1, true, usbif.TypeBulk) }, usbif.StatusNoDev},
		{"unknown address", func(q *usbif.URBRequest) { q.Pipe = usbif.NewPipe(1, 77, 1, true, usbif.TypeBulk) }, usbif.StatusNoDev},
		{"isochronous without descriptors", func(q *usbif.URBRequest) {
			q.Pipe = usbif.NewPipe(1, 2, 3, true, usbif.TypeIsoc)
			q.SetIsoc(1, 0, 1, 0)
		}, usbif.StatusShutdown},
	} {
		buf, _ := r.front.NewBuffer(512, true)
		r.front.Mutate = tc.mut
		rsp, _, err := r.front.Do(r.ctx, bulkIn, nil, nil, 512, 0)
		r.front.Mutate = nil
		if err != nil || rsp.Status != tc.want || rsp.ActualLength != 0 {
			t.Errorf("%s: %+v %v, want %v", tc.name, rsp, err, tc.want)
		}
		buf.End()
	}
	// Still serving after all that.
	if rsp, _, _ := r.front.Do(r.ctx, bulkIn, nil, nil, 100, 0); rsp.Status != 0 || rsp.ActualLength != 100 {
		t.Errorf("after hostile requests: %+v", rsp)
	}
	// SET_ADDRESS 0 un-assigns: the address leads nowhere.
	r.control(1, 2, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 0}, nil)
	if rsp, _, _ := r.front.Do(r.ctx, bulkIn, nil, nil, 100, 0); rsp.Status != usbif.StatusNoDev {
		t.Errorf("after SET_ADDRESS 0: %+v", rsp)
	}
}

// isoRequest builds an isochronous request as xen-hcd does: the data
// buffer's segments, then the segments of the guest's frame-descriptor
// array (granted writable, in place).
func isoRequest(t *testing.T, r *rig, id uint16, in bool, data []byte, descs []usbif.IsoFrameDesc) (usbif.URBRequest, *fronttest.Buffer, *fronttest.Buffer) {
	t.Helper()
	db, err := r.front.NewBuffer(len(data), in)
	if err != nil {
		t.Fatal(err)
	}
	copy(db.Data, data)
	fb, err := r.front.NewBuffer(len(descs)*usbif.IsoFrameDescSize, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range descs {
		d.Encode((*[usbif.IsoFrameDescSize]byte)(fb.Data[i*usbif.IsoFrameDescSize:]))
	}
	ep := uint8(5)
	if in {
		ep = 4
	}
	q := fronttest.Request(id, usbif.NewPipe(1, 2, ep, in, usbif.TypeIsoc), db)
	copy(q.Seg[q.NrBufferSegs:], fb.Segs)
	q.SetIsoc(1, 0, uint16(len(descs)), uint16(len(fb.Segs)))
	return q, db, fb
}

func TestIsochronousDescriptorsInPlace(t *testing.T) {
	r := newRig(t)
	r.plug()
	r.enumerate(2)
	// IN: 3 packets of 100 bytes at guest offsets 0, 200, 400; the bytes
	// between them are the guest's and must stay so.
	guest := bytes.Repeat([]byte{0xee}, 600)
	descs := []usbif.IsoFrameDesc{{Offset: 0, Length: 100}, {Offset: 200, Length: 100}, {Offset: 400, Length: 100}}
	q, db, fb := isoRequest(t, r, 1, true, guest, descs)
	r.front.Submit(&q)
	rsp, err := r.front.Wait(r.ctx, 1)
	if err != nil || rsp.Status != usbif.StatusOK || rsp.ActualLength != 198 || rsp.ErrorCount != 1 || rsp.StartFrame != 7 {
		t.Fatalf("iso IN response %+v %v", rsp, err)
	}
	want := []usbif.IsoFrameDesc{{Offset: 0, Length: 100, ActualLength: 100}, {Offset: 200, Length: 100, Status: int32(usbif.StatusIOError)}, {Offset: 400, Length: 100, ActualLength: 98}}
	for i := range want {
		var d usbif.IsoFrameDesc
		d.Decode((*[usbif.IsoFrameDescSize]byte)(fb.Data[i*usbif.IsoFrameDescSize:]))
		if d != want[i] {
			t.Errorf("descriptor %d: %+v, want %+v", i, d, want[i])
		}
	}
	if db.Data[0] != 0x40 || db.Data[99] != 0x40 || db.Data[100] != 0xee || db.Data[199] != 0xee ||
		db.Data[400] != 0x42 || db.Data[497] != 0x42 || db.Data[498] != 0xee {
		t.Error("iso IN data not at the packets' offsets, or the gaps changed")
	}
	for _, b := range []*fronttest.Buffer{db, fb} {
		if err := b.End(); err != nil {
			t.Fatal(err)
		}
	}

	// OUT: the device sees each packet at its offset.
	out := make([]byte, 300)
	for i := range out {
		out[i] = byte(i)
	}
	q, db, fb = isoRequest(t, r, 2, false, out, []usbif.IsoFrameDesc{{Offset: 100, Length: 50}, {Offset: 0, Length: 10}})
	r.front.Submit(&q)
	if rsp, err := r.front.Wait(r.ctx, 2); err != nil || rsp.Status != usbif.StatusOK {
		t.Fatalf("iso OUT %+v %v", rsp, err)
	}
	if len(r.dev.isoOut) != 2 || !bytes.Equal(r.dev.isoOut[0], out[100:150]) || !bytes.Equal(r.dev.isoOut[1], out[:10]) {
		t.Fatalf("device saw %d packets", len(r.dev.isoOut))
	}
	db.End()
	fb.End()

	// Hostile descriptors: a packet beyond the data, too many packets,
	// fewer descriptor bytes than packets (Validate).
	for _, tc := range []struct {
		name  string
		descs []usbif.IsoFrameDesc
		mut   func(*usbif.URBRequest)
	}{
		{"packet beyond the data", []usbif.IsoFrameDesc{{Offset: 550, Length: 100}}, nil},
		{"offset wraps u32", []usbif.IsoFrameDesc{{Offset: 0xffffff00, Length: 0x200}}, nil},
		{"129 packets", make([]usbif.IsoFrameDesc, 129), nil},
		{"descriptors short", []usbif.IsoFrameDesc{{Length: 10}}, func(q *usbif.URBRequest) { q.SetIsoc(1, 0, 2, q.NrFrameDescSegs()) }},
	} {
		q, db, fb := isoRequest(t, r, 3, true, make([]byte, 600), tc.descs)
		if tc.mut != nil {
			tc.mut(&q)
		}
		r.front.Submit(&q)
		if rsp, err := r.front.Wait(r.ctx, 3); err != nil || rsp.Status != usbif.StatusShutdown {
			t.Errorf("%s: %+v %v", tc.name, rsp, err)
		}
		db.End()
		fb.End()
	}
}

func TestDuplicateInFlightIDsEachAnsweredOnce(t *testing.T) {
	r := newRig(t)
	r.plug()
	r.enumerate(2)
	b1, _ := r.front.NewBuffer(64, true)
	b2, _ := r.front.NewBuffer(64, true)
	q1 := fronttest.Request(9, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), b1)
	q2 := fronttest.Request(9, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), b2)
	r.front.Submit(&q1)
	r.front.Submit(&q2)
	if _, err := r.front.Wait(r.ctx, 9); err != nil {
		t.Fatal(err)
	}
	if _, err := r.front.Wait(r.ctx, 9); err != nil {
		t.Fatal(err)
	}
	if st := r.e.Stats(); st.Responses != st.Requests {
		t.Errorf("requests %d, responses %d", st.Requests, st.Responses)
	}
}

func TestProducerOverflowQuarantines(t *testing.T) {
	r := newRig(t)
	r.plug()
	page := r.front.URBPage()
	h := ring.ReadHeader(page)
	binary.LittleEndian.PutUint32(page[ring.OffReqProd:], h.RspProd+17)
	r.front.Kick()
	select {
	case err := <-r.errc:
		if !errors.Is(err, ring.ErrRequestOverflow) {
			t.Fatalf("run ended with %v", err)
		}
		r.errc <- err // for the cleanup
	case <-r.ctx.Done():
		t.Fatal("a bogus producer index was not quarantined")
	}
	if r.dev.closes != 1 {
		t.Errorf("device not released: closes %d", r.dev.closes)
	}
}

// TestFrontendThatNeverReadsResponsesAndFloods: a frontend fills the ring
// and never takes its responses, then floods the event channel. The
// engine answers everything it consumed, stays responsive, and serves
// again once the frontend reads.
func TestFrontendThatNeverReadsResponsesAndFloods(t *testing.T) {
	r := newRig(t)
	r.plug()
	r.enumerate(2)
	page := r.front.URBPage()
	before := ring.ReadHeader(page).RspProd
	for id := uint16(0); id < 16; id++ {
		b, _ := r.front.NewBuffer(64, true)
		q := fronttest.Request(id, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), b)
		if err := r.front.Submit(&q); err != nil {
			t.Fatal(err)
		}
	}
	// All 16 answered on the page, though the frontend reads none of them.
	for ring.ReadHeader(page).RspProd-before != 16 {
		if r.ctx.Err() != nil {
			t.Fatalf("only %d of 16 answered", ring.ReadHeader(page).RspProd-before)
		}
		r.e.Stats() // a round trip through the engine
	}
	var q usbif.URBRequest
	if err := r.front.Submit(&q); err == nil {
		t.Fatal("a full ring accepted a 17th request")
	}
	for i := 0; i < 10000; i++ {
		r.front.Kick()
	}
	if st := r.e.Stats(); st.Requests != st.Responses || st.InFlight != 0 {
		t.Fatalf("after the flood: %+v", st)
	}
	// Once the frontend reads, the ring works again.
	for id := uint16(0); id < 16; id++ {
		if _, err := r.front.Wait(r.ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if rsp, _, err := r.front.Do(r.ctx, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), nil, nil, 100, 0); err != nil || rsp.ActualLength != 100 {
		t.Fatalf("after reading: %+v %v", rsp, err)
	}
}

package backend

import (
	"testing"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/stub"
)

// FuzzDispatch feeds the engine requests that decode but lie in every
// other way (any pipe, flags, lengths, setup packets, segments, unlink
// targets, iso descriptors), up to a ring's worth at a time, with a
// device plugged and addressed. Whatever they say: no panic, each request
// answered exactly once with its own id, nothing left in flight or
// mapped.
func FuzzDispatch(f *testing.F) {
	mem := fronttest.NewMem()
	front, _, _ := fronttest.New(mem.Granter(), mem.FrontEvents(), 0)
	buf, _ := front.NewBuffer(8192, true)
	seed := func(reqs ...usbif.URBRequest) []byte {
		var out []byte
		for _, q := range reqs {
			var b [usbif.URBRequestSize]byte
			q.Encode(&b)
			out = append(out, b[:]...)
		}
		return out
	}
	bulk := fronttest.Request(1, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), buf)
	ctrl := fronttest.Request(2, usbif.NewPipe(1, 0, 0, true, usbif.TypeCtrl), buf)
	ctrl.SetSetup(getDevice)
	unlink := usbif.URBRequest{ID: 3, Pipe: bulk.Pipe.WithUnlink()}
	unlink.SetUnlinkID(1)
	iso := fronttest.Request(4, usbif.NewPipe(1, 2, 4, true, usbif.TypeIsoc), buf)
	iso.SetIsoc(1, 0, 2, 1)
	iso.Seg[iso.NrBufferSegs] = iso.Seg[0]
	f.Add(seed(bulk, ctrl, unlink, iso))
	f.Add(seed(ctrl))
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := fronttest.NewMem()
		front, rings, err := fronttest.New(mem.Granter(), mem.FrontEvents(), 0)
		if err != nil {
			t.Fatal(err)
		}
		// The same grant refs as the seeds used: the buffer is the
		// first allocation after the rings, as in the seed's world.
		if _, err := front.NewBuffer(8192, true); err != nil {
			t.Fatal(err)
		}
		e, err := New(Config{Dom: 1, NumPorts: 4, Mapper: mem.Mapper(), Events: mem.BackEvents()}, rings)
		if err != nil {
			t.Fatal(err)
		}
		dev := &fakeDev{}
		e.ports[1] = portState{dev: dev, speed: usbif.SpeedHigh}
		e.addrs[2] = 1
		rf := ring.AttachFront[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](front.URBPage(), 0)
		ids := map[uint16]int{}
		n := 0
		for len(data) >= usbif.URBRequestSize && n < usbif.URBRingSize {
			var raw [usbif.URBRequestSize]byte
			copy(raw[:], data)
			data = data[usbif.URBRequestSize:]
			rf.PutRequest(&raw)
			ids[uint16(raw[0])|uint16(raw[1])<<8]++
			n++
		}
		rf.PushRequests()
		e.pass(true)
		for e.stats.InFlight > 0 {
			e.complete(<-e.done)
			e.pass(true)
		}
		if e.err != nil {
			t.Fatalf("request contents quarantined the vusb: %v", e.err)
		}
		rf.Poll()
		var rsp [usbif.URBResponseSize]byte
		got := 0
		for rf.NextResponse(&rsp) {
			var r usbif.URBResponse
			r.Decode(&rsp)
			if ids[r.ID] == 0 {
				t.Fatalf("response for id %d, not asked (or answered twice)", r.ID)
			}
			ids[r.ID]--
			got++
		}
		if got != n {
			t.Fatalf("%d requests, %d responses", n, got)
		}
		e.shutdown()
		if mem.Mapped != 0 {
			t.Fatalf("%d mappings left after shutdown", mem.Mapped)
		}
	})
}

var _ stub.Device = (*fakeDev)(nil)

package backend

import (
	"testing"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/stub"
)

// directRig drives the engine by hand (no Run goroutine): a raw front
// ring on the same page, a device plugged and addressed.
func directRig(t testing.TB, n int) (*Engine, *ring.Front[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte], [usbif.URBRequestSize]byte) {
	mem := fronttest.NewMem()
	front, rings, err := fronttest.New(mem.Granter(), mem.FrontEvents(), 0)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{Dom: 1, NumPorts: 4, Mapper: mem.Mapper(), Events: mem.BackEvents()}, rings)
	if err != nil {
		t.Fatal(err)
	}
	e.ports[1] = portState{dev: &fakeDev{noFill: true}, speed: usbif.SpeedHigh}
	e.addrs[2] = 1
	buf, err := front.NewBuffer(n, true)
	if err != nil {
		t.Fatal(err)
	}
	req := fronttest.Request(1, usbif.NewPipe(1, 2, 1, true, usbif.TypeBulk), buf)
	var raw [usbif.URBRequestSize]byte
	req.Encode(&raw)
	rf := ring.AttachFront[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](front.URBPage(), 0)
	return e, rf, raw
}

// roundTrip is one URB through the engine: request on the ring, the
// engine's pass, the device's completion, the IN data copied to the
// grants, the response on the ring, the front taking it.
func roundTrip(e *Engine, rf *ring.Front[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte], raw *[usbif.URBRequestSize]byte) {
	var rsp [usbif.URBResponseSize]byte
	rf.PutRequest(raw)
	rf.PushRequests()
	e.pass(true)
	e.complete(<-e.done)
	e.pass(true)
	rf.Poll()
	rf.NextResponse(&rsp)
}

func TestBackendPathAllocatesNothing(t *testing.T) {
	e, rf, raw := directRig(t, 60000)
	if n := testing.AllocsPerRun(200, func() { roundTrip(e, rf, &raw) }); n != 0 {
		t.Errorf("%v allocations per URB on the backend path", n)
	}
	if e.err != nil || e.stats.Responses != e.stats.Requests || e.stats.BytesIn == 0 {
		t.Errorf("engine state: %v %+v", e.err, e.stats)
	}
}

// BenchmarkBulkIn64K moves 60000-byte bulk IN URBs through the engine
// (ring, validation, dispatch, grant copy, response) to an in-memory
// device. Reference: the device's own Submit of the same transfer plus
// one copy of the bytes, in the same run.
func BenchmarkBulkIn64K(b *testing.B) {
	const n = 60000
	b.Run("engine", func(b *testing.B) {
		e, rf, raw := directRig(b, n)
		b.SetBytes(n)
		b.ReportAllocs()
		for b.Loop() {
			roundTrip(e, rf, &raw)
		}
	})
	b.Run("reference-device+copy", func(b *testing.B) {
		d := &fakeDev{noFill: true}
		done := make(chan *stub.Transfer, 1)
		x := new(stub.Transfer)
		src := make([]byte, n)
		dst := make([]byte, n)
		b.SetBytes(n)
		b.ReportAllocs()
		for b.Loop() {
			*x = stub.Transfer{Type: usbif.TypeBulk, Endpoint: 0x81, Buffer: src, Done: done}
			d.Submit(x)
			<-done
			copy(dst, src)
		}
	})

}

package frontend

import (
	"context"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend"
	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub/null"
)

// nullRig: our frontend and our engine over the in-process hypervisor,
// a device on port 1 that only completes, addressed.
func nullRig(tb testing.TB) (*Frontend, context.CancelFunc) {
	mem := fronttest.NewMem()
	f, rings, err := New(Config{NumPorts: 1, Granter: mem.Granter(), Events: mem.FrontEvents()})
	if err != nil {
		tb.Fatal(err)
	}
	e, err := backend.New(backend.Config{Dom: 1, NumPorts: 1, Mapper: mem.Mapper(), Events: mem.BackEvents()}, rings)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	go e.Run(ctx)
	go f.Run(ctx)
	e.Plug(1, null.New())
	done := make(chan *URB, 1)
	f.Submit(&URB{Port: 1, Type: usbif.TypeCtrl, Setup: usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 2}, Done: done})
	if u := <-done; u.Status != 0 {
		tb.Fatal(u.Status)
	}
	return f, cancel
}

// The frontend's path allocates nothing per URB: submit, request on the
// ring, response checked, IN data copied out, completion.
func TestFrontendPathAllocatesNothing(t *testing.T) {
	f, cancel := nullRig(t)
	defer cancel()
	done := make(chan *URB, 1)
	u := &URB{Port: 1, Addr: 2, Endpoint: 0x81, Type: usbif.TypeBulk, Buffer: make([]byte, 4096), Done: done}
	run := func() {
		if err := f.Submit(u); err != nil {
			t.Fatal(err)
		}
		if r := <-done; r.Status != 0 || r.Actual != 4096 {
			t.Fatalf("%v %d", r.Status, r.Actual)
		}
	}
	for i := 0; i < 100; i++ {
		run() // warm: the queue's array reaches its size
	}
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Fatalf("%.2f allocations per URB", n)
	}
}

// BenchmarkFrontendURB: one 4 KiB bulk IN at a time through our frontend
// and engine in one process (the in-process hypervisor), against a plain
// copy of the same bytes.
func BenchmarkFrontendURB(b *testing.B) {
	f, cancel := nullRig(b)
	defer cancel()
	done := make(chan *URB, 1)
	u := &URB{Port: 1, Addr: 2, Endpoint: 0x81, Type: usbif.TypeBulk, Buffer: make([]byte, 4096), Done: done}
	b.Run("path", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(4096)
		for i := 0; i < b.N; i++ {
			f.Submit(u)
			<-done
		}
	})
	b.Run("reference-copy", func(b *testing.B) {
		src, dst := make([]byte, 4096), make([]byte, 4096)
		b.SetBytes(4096)
		for i := 0; i < b.N; i++ {
			copy(dst, src)
		}
	})
}

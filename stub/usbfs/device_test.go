package usbfs

import (
	"bytes"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// A composite device as usbfs returns it: configuration 1 has interfaces
// 0 (bulk 0x81/0x02, interrupt 0x83) and 2 (iso 0x84 IN, 0x05 OUT, in
// alt 1); configuration 2 has interface 0 only.
var composite = []byte{
	18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x34, 0x12, 0x78, 0x56, 0x01, 0x00, 1, 2, 3, 2,
	9, 2, 71, 0, 2, 1, 0, 0x80, 50,
	9, 4, 0, 0, 3, 0xff, 0, 0, 0,
	7, 5, 0x81, 2, 0x00, 0x02, 0,
	7, 5, 0x02, 2, 0x00, 0x02, 0,
	7, 5, 0x83, 3, 8, 0, 4,
	9, 4, 2, 0, 0, 1, 2, 0, 0,
	9, 4, 2, 1, 2, 1, 2, 0, 0,
	7, 5, 0x84, 5, 0x00, 0x04, 1,
	7, 5, 0x05, 5, 0x00, 0x04, 1,
	9, 2, 25, 0, 1, 2, 0, 0x80, 50,
	9, 4, 0, 0, 1, 0xff, 0, 0, 0,
	7, 5, 0x81, 2, 0x00, 0x02, 0,
}

func openFake(t *testing.T, gone func()) (*Device, *fakeKernel) {
	t.Helper()
	k := newFakeKernel(composite)
	d, err := allocDevice(Options{Busid: "1-2.3", Speed: usbif.SpeedHigh, Config: 1, OnGone: gone,
		Identity: stub.Identity{VID: 0x1234, PID: 0x5678, Product: "Composite"}})
	if err != nil {
		t.Fatal(err)
	}
	k.attach(d) // the kernel reads and writes the Device's memory
	if err := d.start(k); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, k
}

func xfer(typ usbif.PipeType, ep uint8, n int) (*stub.Transfer, chan *stub.Transfer) {
	done := make(chan *stub.Transfer, 64)
	return &stub.Transfer{Type: typ, Endpoint: ep, Buffer: make([]byte, n), Done: done}, done
}

func wait(t *testing.T, done <-chan *stub.Transfer) *stub.Transfer {
	t.Helper()
	select {
	case x := <-done:
		return x
	case <-time.After(10 * time.Second):
		t.Fatal("transfer never completed")
	}
	return nil
}

func TestOpenClaimsEveryInterfaceFromKernelDrivers(t *testing.T) {
	d, k := openFake(t, nil)
	want := []string{"disconnect-claim 0 flags 2 except usbfs", "disconnect-claim 2 flags 2 except usbfs"}
	if got := k.callLog(); !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if !bytes.Equal(d.DeviceDescriptor(), composite[:18]) || d.Identity().Product != "Composite" || d.Speed() != usbif.SpeedHigh {
		t.Fatal("identity")
	}
}

func TestControlBulkAndShortNotOK(t *testing.T) {
	d, k := openFake(t, nil)
	c, done := xfer(usbif.TypeCtrl, 0x80, 18)
	c.Setup = usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: 0x0100, Length: 18}
	if err := d.Submit(c); err != nil {
		t.Fatal(err)
	}
	if got := wait(t, done); got.Status != usbif.StatusOK || got.Actual != 18 || !bytes.Equal(got.Buffer, composite[:18]) {
		t.Fatalf("GET_DESCRIPTOR: %v %d % x", got.Status, got.Actual, got.Buffer)
	}

	out, done := xfer(usbif.TypeBulk, 0x02, 1000)
	for i := range out.Buffer {
		out.Buffer[i] = byte(i)
	}
	out.ShortNotOK = true // never passed on for OUT: usbfs refuses it
	if err := d.Submit(out); err != nil {
		t.Fatal(err)
	}
	if got := wait(t, done); got.Status != usbif.StatusOK || got.Actual != 1000 {
		t.Fatalf("bulk OUT %v %d", got.Status, got.Actual)
	}
	if !bytes.Equal(k.outData[0x02], out.Buffer) {
		t.Fatal("bulk OUT data differs at the device")
	}

	k.short = 100
	in, done := xfer(usbif.TypeBulk, 0x81, 512)
	in.ShortNotOK = true
	if err := d.Submit(in); err != nil {
		t.Fatal(err)
	}
	got := wait(t, done)
	if got.Status != usbif.StatusRemoteIO || got.Actual != 412 || got.Buffer[1] != byte(3+0x81) {
		t.Fatalf("short bulk IN %v %d", got.Status, got.Actual)
	}
}

func TestManyInFlightCompleteInAnyOrderEachOnce(t *testing.T) {
	d, k := openFake(t, nil)
	k.hold[0x83] = true
	done := make(chan *stub.Transfer, 64)
	for i := 0; i < 8; i++ {
		x := &stub.Transfer{Type: usbif.TypeIntr, Endpoint: 0x83, Buffer: make([]byte, 8), Done: done, Cookie: i}
		if err := d.Submit(x); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 8; i++ { // bulk ones complete while the interrupt ones wait
		x := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: 0x81, Buffer: make([]byte, 64), Done: done, Cookie: 100 + i}
		if err := d.Submit(x); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 8; i++ {
		if x := wait(t, done); x.Cookie.(int) != 100+i {
			t.Fatalf("bulk completion %d is %v: one endpoint's URBs must come back in order", i, x.Cookie)
		}
	}
	k.release(0x83) // the fake completes them newest first
	seen := map[int]bool{}
	for i := 0; i < 8; i++ {
		x := wait(t, done)
		if seen[x.Cookie.(int)] || x.Status != usbif.StatusOK {
			t.Fatalf("completion %v twice or failed (%v)", x.Cookie, x.Status)
		}
		seen[x.Cookie.(int)] = true
	}
	select {
	case x := <-done:
		t.Fatalf("extra completion %v", x.Cookie)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestCancelDiscardsAndTheURBComesBack(t *testing.T) {
	d, k := openFake(t, nil)
	k.hold[0x83] = true
	x, done := xfer(usbif.TypeIntr, 0x83, 8)
	if err := d.Submit(x); err != nil {
		t.Fatal(err)
	}
	d.Cancel(x)
	d.Cancel(x) // twice: one discard only
	if got := wait(t, done); got.Status != usbif.StatusConnReset || got.Actual != 0 {
		t.Fatalf("cancelled: %v %d", got.Status, got.Actual)
	}
	d.Cancel(x) // after completion: nothing happens
}

func TestIsochronousPackedForUsbfsSpreadForTheGuest(t *testing.T) {
	d, k := openFake(t, nil)
	// The guest's layout: 4 packets of 100 bytes at offsets 0, 128, 256, 384.
	in, done := xfer(usbif.TypeIsoc, 0x84, 512)
	in.Packets = []stub.IsoPacket{{Offset: 0, Length: 100}, {Offset: 128, Length: 100}, {Offset: 256, Length: 100}, {Offset: 384, Length: 100}}
	for i := range in.Buffer {
		in.Buffer[i] = 0xee
	}
	if err := d.Submit(in); err != nil {
		t.Fatal(err)
	}
	got := wait(t, done)
	// The fake answers packet i with 100 - i%3 bytes, packet 2 fails (-EXDEV).
	wantActual := []int{100, 99, 0, 100}
	for i, p := range got.Packets {
		if p.Actual != wantActual[i] {
			t.Fatalf("packet %d actual %d, want %d", i, p.Actual, wantActual[i])
		}
		if p.Actual > 0 && (got.Buffer[p.Offset] != byte(i*16) || got.Buffer[p.Offset+p.Actual-1] != byte(i*16+p.Actual-1)) {
			t.Fatalf("packet %d data not at the guest's offset %d", i, p.Offset)
		}
	}
	if got.Packets[2].Status != usbif.StatusIOError || got.ErrorCount != 1 || got.StartFrame != 42 || got.Actual != 299 {
		t.Fatalf("iso results: %+v, errors %d, frame %d, actual %d", got.Packets[2], got.ErrorCount, got.StartFrame, got.Actual)
	}
	if got.Buffer[100] != 0xee || got.Buffer[127] != 0xee {
		t.Fatal("bytes between the guest's packets were touched")
	}

	out, done := xfer(usbif.TypeIsoc, 0x05, 300)
	out.Packets = []stub.IsoPacket{{Offset: 200, Length: 50}, {Offset: 0, Length: 30}}
	for i := range out.Buffer {
		out.Buffer[i] = byte(i)
	}
	if err := d.Submit(out); err != nil {
		t.Fatal(err)
	}
	wait(t, done)
	if len(k.isoOut) != 2 || !bytes.Equal(k.isoOut[0], out.Buffer[200:250]) || !bytes.Equal(k.isoOut[1], out.Buffer[:30]) {
		t.Fatal("iso OUT packets not gathered in order")
	}

	bad, _ := xfer(usbif.TypeIsoc, 0x84, 100)
	bad.Packets = []stub.IsoPacket{{Offset: 50, Length: 60}}
	if err := d.Submit(bad); !errors.Is(err, stub.ErrInvalid) {
		t.Fatalf("packet beyond the buffer: %v", err)
	}
	bad.Packets = make([]stub.IsoPacket, 129)
	if err := d.Submit(bad); !errors.Is(err, stub.ErrInvalid) {
		t.Fatalf("129 packets: %v", err)
	}
}

func TestStandardRequestsGoThroughTheKernel(t *testing.T) {
	d, k := openFake(t, nil)
	if err := d.SetInterface(2, 1); err != nil {
		t.Fatal(err)
	}
	if err := d.ClearHalt(0x81); err != nil {
		t.Fatal(err)
	}
	if err := d.SetConfiguration(2); err != nil {
		t.Fatal(err)
	}
	if err := d.SetConfiguration(0); err != nil {
		t.Fatal(err)
	}
	if err := d.Reset(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"disconnect-claim 0 flags 2 except usbfs", "disconnect-claim 2 flags 2 except usbfs",
		"set-interface 2 1", "clear-halt 0x81",
		// usbfs refuses SET_CONFIGURATION while interfaces are claimed.
		"release 0", "release 2", "set-configuration 2", "disconnect-claim 0 flags 2 except usbfs",
		"release 0", "set-configuration -1", // unconfigure: nothing to claim after
		"reset",
	}
	if got := k.callLog(); !reflect.DeepEqual(got, want) {
		t.Fatalf("calls\n %q\nwant\n %q", got, want)
	}
	k.fail[IoctlSetInterface] = unix.EINVAL
	if err := d.SetInterface(9, 9); !errors.Is(err, stub.ErrStall) {
		t.Fatalf("refused SET_INTERFACE: %v", err)
	}
}

func TestResetReleasesThenReclaims(t *testing.T) {
	d, k := openFake(t, nil)
	if err := d.Reset(); err != nil {
		t.Fatal(err)
	}
	got := k.callLog()[2:]
	want := []string{"release 0", "release 2", "reset", "disconnect-claim 0 flags 2 except usbfs", "disconnect-claim 2 flags 2 except usbfs"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
}

func TestSubmitErrors(t *testing.T) {
	d, k := openFake(t, nil)
	x, _ := xfer(usbif.TypeBulk, 0x8f, 8) // no such endpoint: ENOENT
	if err := d.Submit(x); !errors.Is(err, stub.ErrInvalid) {
		t.Fatalf("ENOENT: %v", err)
	}
	k.fail[IoctlSubmitURB] = unix.EPIPE
	if err := d.Submit(x); !errors.Is(err, stub.ErrStall) {
		t.Fatalf("EPIPE: %v", err)
	}
	k.fail[IoctlSubmitURB] = unix.ENOMEM
	if err := d.Submit(x); !errors.Is(err, stub.ErrBusy) {
		t.Fatalf("ENOMEM: %v", err)
	}
	huge, _ := xfer(usbif.TypeBulk, 0x81, bufStride+1)
	if err := d.Submit(huge); !errors.Is(err, stub.ErrInvalid) {
		t.Fatalf("oversized: %v", err)
	}
	k.hold[0x83] = true
	for i := 0; i < Slots; i++ {
		y, _ := xfer(usbif.TypeIntr, 0x83, 8)
		if err := d.Submit(y); err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
	}
	y, _ := xfer(usbif.TypeIntr, 0x83, 8)
	if err := d.Submit(y); !errors.Is(err, stub.ErrBusy) {
		t.Fatalf("slot %d: %v", Slots, err)
	}
	if k.submits != Slots {
		t.Fatalf("%d URBs reached the kernel", k.submits)
	}
}

func TestUnplugAnswersEverythingThenTellsTheOwnerOnce(t *testing.T) {
	goneC := make(chan struct{}, 2)
	d, k := openFake(t, func() { goneC <- struct{}{} })
	k.hold[0x83] = true
	done := make(chan *stub.Transfer, 8)
	for i := 0; i < 3; i++ {
		if err := d.Submit(&stub.Transfer{Type: usbif.TypeIntr, Endpoint: 0x83, Buffer: make([]byte, 8), Done: done}); err != nil {
			t.Fatal(err)
		}
	}
	k.unplug()
	for i := 0; i < 3; i++ {
		if x := wait(t, done); x.Status != usbif.StatusNoDev {
			t.Fatalf("URB after unplug: %v", x.Status)
		}
	}
	select {
	case <-goneC:
	case <-time.After(5 * time.Second):
		t.Fatal("owner never told")
	}
	x, _ := xfer(usbif.TypeBulk, 0x81, 8)
	if err := d.Submit(x); !errors.Is(err, stub.ErrNoDevice) {
		t.Fatalf("submit after unplug: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-goneC:
		t.Fatal("told twice")
	case <-time.After(20 * time.Millisecond):
	}
}

func TestCloseDiscardsReleasesAndReattachesDrivers(t *testing.T) {
	d, k := openFake(t, nil)
	k.hold[0x83] = true
	x, done := xfer(usbif.TypeIntr, 0x83, 8)
	if err := d.Submit(x); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := wait(t, done); got.Status != usbif.StatusConnReset {
		t.Fatalf("in-flight URB at close: %v", got.Status)
	}
	want := []string{"release 0", "ioctl 0 connect", "release 2", "ioctl 2 connect"}
	if got := k.callLog()[2:]; !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	if err := d.Submit(x); !errors.Is(err, stub.ErrNoDevice) {
		t.Fatalf("submit after close: %v", err)
	}
}

func TestAForeignReapAddressIsIgnored(t *testing.T) {
	d, k := openFake(t, nil)
	k.mu.Lock()
	k.bogusReap = k.base + 7
	k.mu.Unlock()
	x, done := xfer(usbif.TypeBulk, 0x81, 8)
	if err := d.Submit(x); err != nil {
		t.Fatal(err)
	}
	if got := wait(t, done); got.Status != usbif.StatusOK {
		t.Fatal(got.Status)
	}
}

// echoKernel completes every URB at once with its full length and
// allocates nothing itself, so the test below counts only the Device.
type echoKernel struct {
	mu    sync.Mutex
	d     *Device
	queue [Slots]uintptr
	n     int
	kick  chan struct{}
	done  chan struct{}
}

func (e *echoKernel) ioctl(req, arg uintptr) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch req {
	case IoctlSubmitURB:
		e.queue[e.n] = arg
		e.n++
		select {
		case e.kick <- struct{}{}:
		default:
		}
	case IoctlReapURBNDelay:
		if e.n == 0 {
			return 0, unix.EAGAIN
		}
		e.n--
		u := e.queue[e.n]
		h := e.d.mem[u-e.d.base:]
		le.PutUint32(h[offActualLength:], le.Uint32(h[offBufferLength:]))
		le.PutUint64(e.d.mem[arg-e.d.base:], uint64(u))
	}
	return 0, nil
}

func (e *echoKernel) wait(drain func() bool) error {
	for !drain() {
		select {
		case <-e.kick:
		case <-e.done:
			return errors.New("closed")
		}
	}
	return nil
}
func (e *echoKernel) read() ([]byte, error) { return composite, nil }
func (e *echoKernel) close() error          { close(e.done); return nil }

func TestSubmitAndReapAllocateNothing(t *testing.T) {
	d, err := allocDevice(Options{Busid: "1-1", Speed: usbif.SpeedHigh})
	if err != nil {
		t.Fatal(err)
	}
	// One kernel step at a time: the test goroutine submits, the reaper
	// answers; the echo kernel's queue is touched by one side at a time.
	e := &echoKernel{d: d, kick: make(chan struct{}, 1), done: make(chan struct{})}
	if err := d.start(e); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	done := make(chan *stub.Transfer, 1)
	x := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: 0x81, Buffer: make([]byte, 4096), Done: done}
	allocs := testing.AllocsPerRun(500, func() {
		if err := d.Submit(x); err != nil {
			t.Fatal(err)
		}
		if got := <-done; got.Actual != 4096 {
			t.Fatalf("actual %d", got.Actual)
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per URB on the usbfs path", allocs)
	}
}

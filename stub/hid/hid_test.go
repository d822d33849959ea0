package hid

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

func control(t *testing.T, d stub.Device, s usbif.SetupPacket, out []byte) (usbif.Status, []byte) {
	t.Helper()
	done := make(chan *stub.Transfer, 1)
	buf := make([]byte, s.Length)
	copy(buf, out)
	x := &stub.Transfer{Type: usbif.TypeCtrl, Setup: s, Buffer: buf, Done: done}
	if err := d.Submit(x); err != nil {
		t.Fatal(err)
	}
	r := <-done
	return r.Status, r.Buffer[:r.Actual]
}

func intrIn(d stub.Device, n int) (*stub.Transfer, chan *stub.Transfer) {
	done := make(chan *stub.Transfer, 1)
	x := &stub.Transfer{Type: usbif.TypeIntr, Endpoint: EndpointIn, Buffer: make([]byte, n), Done: done}
	return x, done
}

func next(t *testing.T, d stub.Device, n int) []byte {
	t.Helper()
	x, done := intrIn(d, n)
	if err := d.Submit(x); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.Status != usbif.StatusOK {
			t.Fatalf("report status %v", r.Status)
		}
		return r.Buffer[:r.Actual]
	case <-time.After(10 * time.Second):
		t.Fatal("no report")
	}
	return nil
}

func TestDescriptorsAreABootKeyboard(t *testing.T) {
	d := New(Keyboard, nil)
	defer d.Close()
	st, cfg := control(t, d, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: 0x0200, Length: 255}, nil)
	if st != 0 {
		t.Fatal(st)
	}
	c, _, err := usbdesc.ParseConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	it := c.Interfaces[0]
	if it.Class != 3 || it.SubClass != 1 || it.Protocol != 1 || len(it.Endpoints) != 1 || it.Endpoints[0].Type() != usbdesc.XferInterrupt {
		t.Fatalf("interface %+v", it)
	}
	// The HID descriptor sits between interface and endpoint and names
	// the report descriptor's length.
	if !bytes.Contains(cfg, []byte{9, usbif.DescHID, 0x11, 0x01, 0, 1, usbif.DescReport, byte(len(KeyboardReport)), 0}) {
		t.Fatal("no HID descriptor in the configuration")
	}
	st, rep := control(t, d, usbif.SetupPacket{RequestType: 0x81, Request: usbif.ReqGetDescriptor, Value: 0x2200, Length: 200}, nil)
	if st != 0 || !bytes.Equal(rep, KeyboardReport) {
		t.Fatalf("report descriptor %v % x", st, rep)
	}
	if d.Speed() != usbif.SpeedFull || d.Identity().Product != "pvusb emulated keyboard" {
		t.Fatal("identity")
	}
}

func TestClassRequests(t *testing.T) {
	kbd := New(Keyboard, nil)
	defer kbd.Close()
	mouse := New(Mouse, nil)
	defer mouse.Close()
	for _, tc := range []struct {
		name string
		dev  stub.Device
		s    usbif.SetupPacket
		out  []byte
		want usbif.Status
		in   []byte
	}{
		{"SET_IDLE", kbd, usbif.SetupPacket{RequestType: 0x21, Request: reqSetIdle, Value: 0x0000}, nil, 0, nil},
		{"GET_IDLE", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetIdle, Length: 1}, nil, 0, []byte{0}},
		{"GET_PROTOCOL", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetProtocol, Length: 1}, nil, 0, []byte{1}},
		{"SET_PROTOCOL boot", kbd, usbif.SetupPacket{RequestType: 0x21, Request: reqSetProtocol, Value: 0}, nil, 0, nil},
		{"GET_PROTOCOL after", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetProtocol, Length: 1}, nil, 0, []byte{0}},
		{"SET_PROTOCOL 2", kbd, usbif.SetupPacket{RequestType: 0x21, Request: reqSetProtocol, Value: 2}, nil, usbif.StatusStall, nil},
		{"GET_REPORT input", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetReport, Value: 0x0100, Length: 8}, nil, 0, make([]byte, 8)},
		{"GET_REPORT feature", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetReport, Value: 0x0300, Length: 8}, nil, usbif.StatusStall, nil},
		{"SET_REPORT LEDs", kbd, usbif.SetupPacket{RequestType: 0x21, Request: reqSetReport, Value: 0x0200, Length: 1}, []byte{0x03}, 0, nil},
		{"SET_REPORT no data", kbd, usbif.SetupPacket{RequestType: 0x21, Request: reqSetReport, Value: 0x0200}, nil, usbif.StatusStall, nil},
		{"SET_REPORT to a mouse", mouse, usbif.SetupPacket{RequestType: 0x21, Request: reqSetReport, Value: 0x0200, Length: 1}, []byte{1}, usbif.StatusStall, nil},
		{"GET_IDLE no room", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetIdle}, nil, usbif.StatusStall, nil},
		{"wrong interface", kbd, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetProtocol, Index: 1, Length: 1}, nil, usbif.StatusStall, nil},
		{"unknown request", kbd, usbif.SetupPacket{RequestType: 0x21, Request: 0x77}, nil, usbif.StatusStall, nil},
		{"mouse GET_REPORT", mouse, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetReport, Value: 0x0100, Length: 8}, nil, 0, make([]byte, 4)},
	} {
		st, in := control(t, tc.dev, tc.s, tc.out)
		if st != tc.want || (tc.want == 0 && tc.s.In() && !bytes.Equal(in, tc.in)) {
			t.Errorf("%s: %v % x, want %v % x", tc.name, st, in, tc.want, tc.in)
		}
	}
	if LEDs(kbd) != 0x03 {
		t.Errorf("LEDs %#x", LEDs(kbd))
	}
}

func TestKeyboardReportsFromAFifo(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "kbd")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Open(Keyboard, fifo)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("# a comment, then a blank line\n\ntype Hi\nbogus line\npress ctrl c\nrelease\n")
	w.Close() // a fifo writer may come and go
	want := [][]byte{
		{0x02, 0, 0x0b, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}, // shift+h
		{0, 0, 0x0c, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 0, 0}, // i
		{0x01, 0, 0x06, 0, 0, 0, 0, 0}, // ctrl+c held
		{0, 0, 0, 0, 0, 0, 0, 0},
	}
	for i, r := range want {
		if got := next(t, d, 8); !bytes.Equal(got, r) {
			t.Fatalf("report %d: % x, want % x", i, got, r)
		}
	}
	w2, _ := os.OpenFile(fifo, os.O_WRONLY, 0)
	w2.WriteString("tap enter\n")
	w2.Close()
	if got := next(t, d, 8); got[2] != 0x28 {
		t.Fatalf("second writer: % x", got)
	}
	// GET_REPORT answers the last report sent.
	if _, in := control(t, d, usbif.SetupPacket{RequestType: 0xa1, Request: reqGetReport, Value: 0x0100, Length: 8}, nil); in[2] != 0x28 {
		t.Fatalf("GET_REPORT % x", in)
	}
}

func TestMouseReportsAndBootProtocol(t *testing.T) {
	d := New(Mouse, nil)
	defer d.Close()
	if err := Feed(d, "move 200 -5", "press left", "wheel -1", "release left"); err != nil {
		t.Fatal(err)
	}
	for i, r := range [][]byte{{0, 127, 0xfb, 0}, {0, 73, 0, 0}, {1, 0, 0, 0}, {1, 0, 0, 0xff}, {0, 0, 0, 0}} {
		if got := next(t, d, 4); !bytes.Equal(got, r) {
			t.Fatalf("report %d: % x, want % x", i, got, r)
		}
	}
	control(t, d, usbif.SetupPacket{RequestType: 0x21, Request: reqSetProtocol, Value: 0}, nil)
	Feed(d, "click right")
	if got := next(t, d, 8); !bytes.Equal(got, []byte{2, 0, 0}) {
		t.Fatalf("boot protocol report % x", got)
	}
}

func TestIdleRepeatsTheCurrentReport(t *testing.T) {
	d := New(Keyboard, nil)
	defer d.Close()
	Feed(d, "press a")
	next(t, d, 8)
	control(t, d, usbif.SetupPacket{RequestType: 0x21, Request: reqSetIdle, Value: 0x0100}, nil) // 4 ms
	// Nothing new happens, yet the host gets the held key again.
	if got := next(t, d, 8); got[2] != 0x04 {
		t.Fatalf("idle repeat % x", got)
	}
}

func TestSixKeysAndPhantomState(t *testing.T) {
	d := New(Keyboard, nil)
	defer d.Close()
	Feed(d, "press a b c d e f g")
	if got := next(t, d, 8); !bytes.Equal(got[2:], []byte{1, 1, 1, 1, 1, 1}) {
		t.Fatalf("seven keys: % x", got)
	}
}

func TestParseEventRefusals(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		line string
	}{
		{Keyboard, "press"}, {Keyboard, "press nosuchkey"}, {Keyboard, "jump"}, {Keyboard, "type \x01"},
		{Mouse, "move 1"}, {Mouse, "move x 1"}, {Mouse, "move 99999999 0"}, {Mouse, "click thumb"}, {Mouse, "wheel"},
	} {
		if ev, err := ParseEvent(tc.kind, tc.line); err == nil {
			t.Errorf("%q accepted: %+v", tc.line, ev)
		}
	}
	if ev, err := ParseEvent(Keyboard, "  # note"); ev != nil || err != nil {
		t.Error("a comment is not an event")
	}
}

func TestCancelCloseAndWrongEndpoints(t *testing.T) {
	d := New(Keyboard, nil)
	x, done := intrIn(d, 8)
	d.Submit(x)
	d.Cancel(x)
	if r := <-done; r.Status != usbif.StatusConnReset {
		t.Fatal(r.Status)
	}
	bulk := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: 0x02, Buffer: make([]byte, 8), Done: make(chan *stub.Transfer, 1)}
	if err := d.Submit(bulk); !errors.Is(err, stub.ErrStall) {
		t.Fatalf("bulk OUT: %v", err)
	}
	x, done = intrIn(d, 8)
	d.Submit(x)
	d.Close()
	if r := <-done; r.Status != usbif.StatusNoDev {
		t.Fatal(r.Status)
	}
	if err := d.Submit(x); !errors.Is(err, stub.ErrNoDevice) {
		t.Fatalf("after close: %v", err)
	}
}

package acm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

func control(t *testing.T, d stub.Device, s usbif.SetupPacket, out []byte) (usbif.Status, []byte) {
	t.Helper()
	done := make(chan *stub.Transfer, 1)
	buf := make([]byte, s.Length)
	copy(buf, out)
	if err := d.Submit(&stub.Transfer{Type: usbif.TypeCtrl, Setup: s, Buffer: buf, Done: done}); err != nil {
		t.Fatal(err)
	}
	r := <-done
	return r.Status, r.Buffer[:r.Actual]
}

func bulk(t *testing.T, d stub.Device, ep uint8, typ usbif.PipeType, data []byte, n int) *stub.Transfer {
	t.Helper()
	done := make(chan *stub.Transfer, 1)
	buf := make([]byte, n)
	copy(buf, data)
	if err := d.Submit(&stub.Transfer{Type: typ, Endpoint: ep, Buffer: buf, Done: done}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("transfer never completed")
	}
	return nil
}

func open(t *testing.T) (stub.Device, string) {
	t.Helper()
	link := filepath.Join(t.TempDir(), "ttyPV0")
	d, err := Open(link)
	if err != nil {
		t.Fatalf("pty (CI has /dev/ptmx): %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d, link
}

func TestDescriptorsForCdcAcm(t *testing.T) {
	d, _ := open(t)
	_, cfg := control(t, d, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: 0x0200, Length: 255}, nil)
	c, _, err := usbdesc.ParseConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Interfaces) != 2 || c.Interfaces[0].Class != 2 || c.Interfaces[0].SubClass != 2 || c.Interfaces[1].Class != 0x0a {
		t.Fatalf("interfaces %+v", c.Interfaces)
	}
	// cdc-acm needs the union descriptor to find the data interface.
	if !bytes.Contains(cfg, []byte{5, 0x24, 0x06, 0x00, 0x01}) {
		t.Fatal("no union functional descriptor")
	}
}

func TestClassRequests(t *testing.T) {
	d, _ := open(t)
	coding := []byte{0x80, 0x25, 0, 0, 0, 0, 8} // 9600 8N1
	for _, tc := range []struct {
		name string
		s    usbif.SetupPacket
		out  []byte
		want usbif.Status
		in   []byte
	}{
		{"GET_LINE_CODING default", usbif.SetupPacket{RequestType: 0xa1, Request: reqGetLineCoding, Length: 7}, nil, 0, []byte{0x00, 0xc2, 0x01, 0, 0, 0, 8}},
		{"SET_LINE_CODING 9600", usbif.SetupPacket{RequestType: 0x21, Request: reqSetLineCoding, Length: 7}, coding, 0, nil},
		{"GET_LINE_CODING back", usbif.SetupPacket{RequestType: 0xa1, Request: reqGetLineCoding, Length: 7}, nil, 0, coding},
		{"SET_LINE_CODING rate 0", usbif.SetupPacket{RequestType: 0x21, Request: reqSetLineCoding, Length: 7}, []byte{0, 0, 0, 0, 0, 0, 8}, usbif.StatusStall, nil},
		{"SET_LINE_CODING 9 bits", usbif.SetupPacket{RequestType: 0x21, Request: reqSetLineCoding, Length: 7}, []byte{1, 0, 0, 0, 0, 0, 9}, usbif.StatusStall, nil},
		{"SET_LINE_CODING parity 5", usbif.SetupPacket{RequestType: 0x21, Request: reqSetLineCoding, Length: 7}, []byte{1, 0, 0, 0, 0, 5, 8}, usbif.StatusStall, nil},
		{"SET_LINE_CODING short", usbif.SetupPacket{RequestType: 0x21, Request: reqSetLineCoding, Length: 6}, coding[:6], usbif.StatusStall, nil},
		{"GET_LINE_CODING short", usbif.SetupPacket{RequestType: 0xa1, Request: reqGetLineCoding, Length: 3}, nil, usbif.StatusStall, nil},
		{"SET_CONTROL_LINE_STATE", usbif.SetupPacket{RequestType: 0x21, Request: reqSetControlLineState, Value: 3}, nil, 0, nil},
		{"SEND_BREAK", usbif.SetupPacket{RequestType: 0x21, Request: reqSendBreak, Value: 100}, nil, 0, nil},
		{"wrong interface", usbif.SetupPacket{RequestType: 0x21, Request: reqSendBreak, Index: 1}, nil, usbif.StatusStall, nil},
		{"vendor request", usbif.SetupPacket{RequestType: 0x41, Request: reqSendBreak}, nil, usbif.StatusStall, nil},
		{"unknown request", usbif.SetupPacket{RequestType: 0x21, Request: 0x42}, nil, usbif.StatusStall, nil},
	} {
		st, in := control(t, d, tc.s, tc.out)
		if st != tc.want || (tc.want == 0 && tc.s.In() && !bytes.Equal(in, tc.in)) {
			t.Errorf("%s: %v % x, want %v % x", tc.name, st, in, tc.want, tc.in)
		}
	}
	// DTR set: the notification endpoint reports DCD and DSR.
	r := bulk(t, d, EndpointNotify, usbif.TypeIntr, nil, 16)
	if !bytes.Equal(r.Buffer[:r.Actual], []byte{0xa1, 0x20, 0, 0, 0, 0, 2, 0, 3, 0}) {
		t.Fatalf("SERIAL_STATE % x", r.Buffer[:r.Actual])
	}
}

// The serial echo: a program in dom0 on the pty echoes what the guest
// sends; the guest reads it back. Both directions, bytes untouched
// (raw mode: no CR/LF translation, no local echo).
func TestEchoThroughThePty(t *testing.T) {
	d, link := open(t)
	if target, _ := os.Readlink(link); target != TTY(d) {
		t.Fatalf("link %s -> %s, pty %s", link, target, TTY(d))
	}
	tty, err := os.OpenFile(link, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	go func() { // the echo program
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			if err != nil {
				return
			}
			tty.Write(buf[:n])
		}
	}()
	msg := []byte("hello\r\nserial\x00\xff")
	if r := bulk(t, d, EndpointOut, usbif.TypeBulk, msg, len(msg)); r.Status != 0 || r.Actual != len(msg) {
		t.Fatalf("OUT %v %d", r.Status, r.Actual)
	}
	var got []byte
	for len(got) < len(msg) {
		r := bulk(t, d, EndpointIn, usbif.TypeBulk, nil, 512)
		if r.Status != 0 {
			t.Fatal(r.Status)
		}
		got = append(got, r.Buffer[:r.Actual]...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo % x, want % x", got, msg)
	}
}

func TestNothingLostWhenThePtyIsSlowAndClose(t *testing.T) {
	d, link := open(t)
	// 256 KiB sent while nobody reads the pty: more than it buffers, so
	// transfers wait (as a device NAKs) and every byte arrives once the
	// reader comes.
	done := make(chan *stub.Transfer, 64)
	var want []byte
	for i := 0; i < 16; i++ {
		b := bytes.Repeat([]byte{byte('a' + i)}, 16<<10)
		want = append(want, b...)
		if err := d.Submit(&stub.Transfer{Type: usbif.TypeBulk, Endpoint: EndpointOut, Buffer: b, Done: done}); err != nil {
			t.Fatal(err)
		}
	}
	tty, err := os.OpenFile(link, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(tty, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %v; equal %v", err, bytes.Equal(got, want))
	}
	for i := 0; i < 16; i++ {
		if r := <-done; r.Status != 0 || r.Actual != 16<<10 {
			t.Fatalf("OUT %v %d", r.Status, r.Actual)
		}
	}

	inDone := make(chan *stub.Transfer, 1)
	in := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: EndpointIn, Buffer: make([]byte, 64), Done: inDone}
	d.Submit(in)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-inDone; r.Status != usbif.StatusNoDev {
		t.Fatalf("waiting IN at close: %v", r.Status)
	}
	if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("symlink left behind")
	}
	if err := d.Submit(in); !errors.Is(err, stub.ErrNoDevice) {
		t.Fatalf("after close: %v", err)
	}
}

func TestRefusesToReplaceAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(p, []byte("x"), 0o600)
	if _, err := Open(p); err == nil {
		t.Fatal("replaced a regular file with a symlink")
	}
}

package usbhost

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pvusb/pvusb/core/frontend/enginetest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/acm"
	"github.com/pvusb/pvusb/stub/hid"
	"github.com/pvusb/pvusb/stub/msc"
)

// rig: our backend engine and a frontend over the in-process
// hypervisor, a disk on port 1, a keyboard on port 2, a serial port on 3.
type rig struct {
	h      *Host
	conn   chan usbif.ConnResponse
	kbd    stub.Device
	serial stub.Device
	img    string
}

func newRig(t *testing.T) (*rig, context.Context) {
	t.Helper()
	pair := enginetest.New(t, 4)
	e, ctx := pair.E, pair.Ctx
	r := &rig{h: &Host{F: pair.F}, conn: pair.Conn, img: filepath.Join(t.TempDir(), "disk.img")}
	os.WriteFile(r.img, make([]byte, 8<<20), 0o600)
	disk, err := msc.Open(r.img, false)
	if err != nil {
		t.Fatal(err)
	}
	r.kbd = hid.New(hid.Keyboard, nil)
	if r.serial, err = acm.Open(""); err != nil {
		t.Fatal(err)
	}
	for port, dev := range map[uint8]stub.Device{1: disk, 2: r.kbd, 3: r.serial} {
		if err := e.Plug(port, dev); err != nil {
			t.Fatal(err)
		}
	}
	return r, ctx
}

func (r *rig) device(t *testing.T, ctx context.Context, port uint8) *Device {
	t.Helper()
	for {
		select {
		case ev := <-r.conn:
			if ev.Port != port {
				r.conn <- ev // another port's: keep it for its turn
				continue
			}
			d, err := r.h.Enumerate(ctx, port, ev.Speed)
			if err != nil {
				t.Fatal(err)
			}
			return d
		case <-ctx.Done():
			t.Fatalf("port %d never connected", port)
		}
	}
}

func TestDiskThroughTheWholeStack(t *testing.T) {
	r, ctx := newRig(t)
	d := r.device(t, ctx, 1)
	if d.Product != "pvusb emulated disk" || d.Desc.VID != 0x1209 || d.Addr == 0 || d.Speed != usbif.SpeedHigh {
		t.Fatalf("device %+v", d)
	}
	k, err := OpenDisk(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if k.Blocks != 8<<20/512 || k.BlockSize != 512 {
		t.Fatalf("capacity %d × %d", k.Blocks, k.BlockSize)
	}
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := k.Write(ctx, 7, data); err != nil {
		t.Fatal(err)
	}
	if err := k.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(data))
	if err := k.Read(ctx, 7, back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("read back differs")
	}
	img, _ := os.ReadFile(r.img)
	if !bytes.Equal(img[7*512:7*512+len(data)], data) {
		t.Fatal("the image does not hold the data")
	}
	// Beyond the end: a check condition with LBA OUT OF RANGE sense.
	var cc *CheckCondition
	if err := k.Read(ctx, uint32(k.Blocks), make([]byte, 512)); !errors.As(err, &cc) || cc.Sense[0] != 5 || cc.Sense[1] != 0x21 {
		t.Fatalf("read past the end: %v", err)
	}
	// And the disk still works after the error.
	if err := k.Read(ctx, 0, make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
}

func TestKeyboardAndSerial(t *testing.T) {
	r, ctx := newRig(t)
	kbd := r.device(t, ctx, 2)
	ep, ok := kbd.Endpoint(3, 3, true)
	if !ok || kbd.Product != "pvusb emulated keyboard" {
		t.Fatalf("keyboard %+v", kbd)
	}
	if err := hid.Feed(r.kbd, "tap x"); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, 8)
	if n, err := kbd.Transfer(ctx, usbif.TypeIntr, ep, rep); err != nil || n != 8 || rep[2] != 0x1b {
		t.Fatalf("key report % x %v", rep, err)
	}

	ser := r.device(t, ctx, 3)
	tty, err := os.OpenFile(acm.TTY(r.serial), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	in, _ := ser.Endpoint(0x0a, 2, true)
	out, _ := ser.Endpoint(0x0a, 2, false)
	if _, err := ser.Transfer(ctx, usbif.TypeBulk, out, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := tty.Read(got); err != nil || string(got) != "ping" {
		t.Fatalf("pty read %q %v", got, err)
	}
	tty.Write([]byte("pong"))
	buf := make([]byte, 512)
	if n, err := ser.Transfer(ctx, usbif.TypeBulk, in, buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("bulk IN %q %v", buf[:n], err)
	}
}

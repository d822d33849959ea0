package backend

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub/msc"
)

// TestEmulatedDiskThroughTheEngine is the whole path in one process: the
// xen-hcd-style frontend enumerates the emulated disk through the engine,
// speaks Bulk-Only + SCSI to it, writes random data, reads it back, and
// the image file holds exactly that data.
func TestEmulatedDiskThroughTheEngine(t *testing.T) {
	const size = 8 << 20
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, size), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := msc.Open(img, false)
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t)
	if err := r.e.Plug(1, dev); err != nil {
		t.Fatal(err)
	}
	if ev, err := r.front.ConnEvent(r.ctx); err != nil || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("plug %+v %v", ev, err)
	}
	disk := &fronttest.BOT{F: r.front, Port: 1}
	desc, err := disk.Enumerate(r.ctx, 5)
	if err != nil || binary.LittleEndian.Uint16(desc[8:]) != 0x1209 {
		t.Fatalf("enumerate: % x %v", desc, err)
	}
	if inq, st, err := disk.Command(r.ctx, []byte{0x12, 0, 0, 0, 36, 0}, true, nil, 36); err != nil || st != 0 || string(inq[8:16]) != "pvusb   " {
		t.Fatalf("INQUIRY % x %d %v", inq, st, err)
	}
	capa, _, _ := disk.Command(r.ctx, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, nil, 8)
	if binary.BigEndian.Uint32(capa) != size/512-1 {
		t.Fatalf("READ CAPACITY % x", capa)
	}
	data := make([]byte, size-4096)
	rand.Read(data)
	if err := disk.Write(r.ctx, 8, data); err != nil {
		t.Fatal(err)
	}
	if _, st, err := disk.Command(r.ctx, []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false, nil, 0); err != nil || st != 0 {
		t.Fatalf("SYNCHRONIZE CACHE %d %v", st, err)
	}
	h := sha256.New()
	if err := disk.Read(r.ctx, 8, len(data), func(b []byte) { h.Write(b) }); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("data read back differs from data written")
	}
	if file, _ := os.ReadFile(img); !bytes.Equal(file[4096:], data) {
		t.Fatal("the image file does not hold the data written")
	}
}

package backend

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

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
	// Enumeration as Linux does it.
	rsp, desc := r.control(1, 0, getDevice, nil)
	if rsp.Status != 0 || len(desc) != 18 || binary.LittleEndian.Uint16(desc[8:]) != 0x1209 {
		t.Fatalf("device descriptor %+v % x", rsp, desc)
	}
	r.control(1, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 5}, nil)
	_, cfg := r.control(1, 5, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescConfiguration << 8, Length: 255}, nil)
	if len(cfg) != 32 || cfg[9+5] != 0x08 {
		t.Fatalf("configuration % x", cfg)
	}
	if rsp, _ := r.control(1, 5, usbif.SetupPacket{Request: usbif.ReqSetConfiguration, Value: 1}, nil); rsp.Status != 0 {
		t.Fatalf("SET_CONFIGURATION %+v", rsp)
	}
	tag := uint32(0)
	scsi := func(cdb []byte, in bool, data []byte, n int) []byte {
		t.Helper()
		tag++
		c := make([]byte, 31)
		binary.LittleEndian.PutUint32(c[0:], 0x43425355)
		binary.LittleEndian.PutUint32(c[4:], tag)
		binary.LittleEndian.PutUint32(c[8:], uint32(n))
		if in {
			c[12] = 0x80
		}
		c[14] = byte(len(cdb))
		copy(c[15:], cdb)
		out := usbif.NewPipe(1, 5, 2, false, usbif.TypeBulk)
		inp := usbif.NewPipe(1, 5, 1, true, usbif.TypeBulk)
		if rsp, _, err := r.front.Do(r.ctx, out, nil, c, 0, 0); err != nil || rsp.Status != 0 {
			t.Fatalf("CBW %+v %v", rsp, err)
		}
		var got []byte
		// The data phase in URBs of at most 60000 bytes (16 pages from an odd offset).
		for moved := 0; moved < n; {
			chunk := min(n-moved, 60000)
			if in {
				rsp, b, err := r.front.Do(r.ctx, inp, nil, nil, chunk, 0)
				if err != nil || rsp.Status != 0 {
					t.Fatalf("data IN %+v %v", rsp, err)
				}
				got = append(got, b...)
			} else if rsp, _, err := r.front.Do(r.ctx, out, nil, data[moved:moved+chunk], 0, 0); err != nil || rsp.Status != 0 {
				t.Fatalf("data OUT %+v %v", rsp, err)
			}
			moved += chunk
		}
		rsp, csw, err := r.front.Do(r.ctx, inp, nil, nil, 13, 0)
		if err != nil || rsp.Status != 0 || len(csw) != 13 || csw[12] != 0 || binary.LittleEndian.Uint32(csw[4:]) != tag {
			t.Fatalf("CSW %+v % x %v", rsp, csw, err)
		}
		return got
	}
	if inq := scsi([]byte{0x12, 0, 0, 0, 36, 0}, true, nil, 36); string(inq[8:16]) != "pvusb   " {
		t.Fatalf("INQUIRY % x", inq)
	}
	capa := scsi([]byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, nil, 8)
	if binary.BigEndian.Uint32(capa) != size/512-1 {
		t.Fatalf("READ CAPACITY % x", capa)
	}
	data := make([]byte, size-4096)
	rand.Read(data)
	for off := 0; off < len(data); off += 120 * 512 { // Linux's usual 120-block commands
		n := min(120*512, len(data)-off)
		cdb := []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(cdb[2:], uint32(8+off/512))
		binary.BigEndian.PutUint16(cdb[7:], uint16(n/512))
		scsi(cdb, false, data[off:off+n], n)
	}
	scsi([]byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false, nil, 0)
	h := sha256.New()
	for off := 0; off < len(data); off += 120 * 512 {
		n := min(120*512, len(data)-off)
		cdb := []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(cdb[2:], uint32(8+off/512))
		binary.BigEndian.PutUint16(cdb[7:], uint16(n/512))
		h.Write(scsi(cdb, true, nil, n))
	}
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("data read back differs from data written")
	}
	file, _ := os.ReadFile(img)
	if !bytes.Equal(file[4096:], data) {
		t.Fatal("the image file does not hold the data written")
	}
	st := r.e.Stats()
	t.Logf("%d requests, %d bytes in, %d bytes out, %d errors", st.Requests, st.BytesIn, st.BytesOut, st.Errors)
}

package msc

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	wire "github.com/pvusb/pvusb/core/bot"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// host drives the device as Linux usb-storage does: CBW on bulk OUT, the
// data phase, the CSW on bulk IN.
type host struct {
	t    *testing.T
	dev  stub.Device
	done chan *stub.Transfer
	tag  uint32
	path string
}

func newHost(t *testing.T, blocks int) *host {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, blocks*BlockSize), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := Open(path, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return &host{t: t, dev: dev, done: make(chan *stub.Transfer, 4), path: path}
}

func (h *host) xfer(ep uint8, buf []byte) *stub.Transfer {
	h.t.Helper()
	x := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: ep, Buffer: buf, Done: h.done}
	if err := h.dev.Submit(x); err != nil {
		h.t.Fatalf("submit to 0x%02x: %v", ep, err)
	}
	select {
	case got := <-h.done:
		return got
	default:
		h.t.Fatalf("transfer on 0x%02x did not complete", ep)
	}
	return nil
}

func (h *host) control(s usbif.SetupPacket, buf []byte) *stub.Transfer {
	h.t.Helper()
	x := &stub.Transfer{Type: usbif.TypeCtrl, Setup: s, Buffer: buf, Done: h.done}
	if err := h.dev.Submit(x); err != nil {
		h.t.Fatal(err)
	}
	return <-h.done
}

type csw struct {
	tag     uint32
	residue uint32
	status  byte
}

// cmd runs one command: data is what came IN (or nil).
func (h *host) cmd(cdb []byte, hostLen int, in bool, out []byte) ([]byte, csw) {
	h.t.Helper()
	h.tag++
	if x := h.xfer(EndpointOut, wire.NewCBW(h.tag, hostLen, in, cdb)); x.Status != usbif.StatusOK {
		h.t.Fatalf("CBW: %v", x.Status)
	}
	var data []byte
	if hostLen > 0 {
		if in {
			x := h.xfer(EndpointIn, make([]byte, hostLen))
			if x.Status == usbif.StatusStall {
				h.dev.ClearHalt(EndpointIn)
			} else {
				data = x.Buffer[:x.Actual]
			}
		} else {
			if x := h.xfer(EndpointOut, out); x.Status == usbif.StatusStall {
				h.dev.ClearHalt(EndpointOut)
			}
		}
	}
	x := h.xfer(EndpointIn, make([]byte, wire.CSWSize))
	if x.Status != usbif.StatusOK || x.Actual != wire.CSWSize {
		h.t.Fatalf("CSW transfer: %v %d", x.Status, x.Actual)
	}
	b := x.Buffer
	if binary.LittleEndian.Uint32(b) != wire.CSWSignature {
		h.t.Fatalf("CSW signature % x", b)
	}
	c := csw{binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:]), b[12]}
	if c.tag != h.tag {
		h.t.Fatalf("CSW tag %d, want %d", c.tag, h.tag)
	}
	return data, c
}

func (h *host) sense() (key, asc byte) {
	h.t.Helper()
	d, c := h.cmd([]byte{opRequestSense, 0, 0, 0, 18, 0}, 18, true, nil)
	if c.status != statusGood || len(d) != 18 || d[0] != 0x70 {
		h.t.Fatalf("REQUEST SENSE: %v % x", c, d)
	}
	return d[2], d[12]
}

func rw10(op byte, lba uint32, blocks uint16) []byte {
	c := make([]byte, 10)
	c[0] = op
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], blocks)
	return c
}

func TestSCSICommands(t *testing.T) {
	h := newHost(t, 2048) // 1 MiB
	d, c := h.cmd([]byte{opInquiry, 0, 0, 0, 36, 0}, 36, true, nil)
	if c.status != 0 || len(d) != 36 || d[0] != 0 || d[1] != 0x80 || string(d[8:16]) != "pvusb   " || string(d[16:32]) != "emulated disk   " {
		t.Errorf("INQUIRY %v % x", c, d)
	}
	d, _ = h.cmd([]byte{opInquiry, 1, 0x80, 0, 64, 0}, 64, true, nil)
	if len(d) < 5 || d[1] != 0x80 || int(d[3]) != len(d)-4 {
		t.Errorf("INQUIRY serial page % x", d)
	}
	if _, c := h.cmd([]byte{opInquiry, 1, 0x83, 0, 64, 0}, 64, true, nil); c.status != statusCheck {
		t.Errorf("INQUIRY of an unsupported page: %v", c)
	} else if k, a := h.sense(); k != senseIllegal || a != ascInvalidField {
		t.Errorf("sense %x/%x", k, a)
	}
	if _, c := h.cmd([]byte{opTestUnitReady, 0, 0, 0, 0, 0}, 0, false, nil); c.status != 0 {
		t.Errorf("TEST UNIT READY %v", c)
	}
	d, _ = h.cmd([]byte{opReadCapacity10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 8, true, nil)
	if binary.BigEndian.Uint32(d) != 2047 || binary.BigEndian.Uint32(d[4:]) != 512 {
		t.Errorf("READ CAPACITY(10) % x", d)
	}
	rc16 := make([]byte, 16)
	rc16[0], rc16[1], rc16[13] = opServiceAction16, saReadCapacity16, 32
	d, _ = h.cmd(rc16, 32, true, nil)
	if binary.BigEndian.Uint64(d) != 2047 || binary.BigEndian.Uint32(d[8:]) != 512 {
		t.Errorf("READ CAPACITY(16) % x", d)
	}
	// WRITE(10) then READ(10): the data round-trips, and reaches the file.
	data := make([]byte, 8*BlockSize)
	rand.Read(data)
	if _, c := h.cmd(rw10(opWrite10, 10, 8), len(data), false, data); c.status != 0 || c.residue != 0 {
		t.Fatalf("WRITE(10) %v", c)
	}
	if back, c := h.cmd(rw10(opRead10, 10, 8), len(data), true, nil); c.status != 0 || !bytes.Equal(back, data) {
		t.Fatalf("READ(10) %v", c)
	}
	if _, c := h.cmd([]byte{opSyncCache10, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0, false, nil); c.status != 0 {
		t.Errorf("SYNCHRONIZE CACHE %v", c)
	}
	file, _ := os.ReadFile(h.path)
	if !bytes.Equal(file[10*BlockSize:18*BlockSize], data) {
		t.Error("the image file does not hold the written data")
	}
	r16 := make([]byte, 16)
	r16[0] = opRead16
	binary.BigEndian.PutUint64(r16[2:], 10)
	binary.BigEndian.PutUint32(r16[10:], 8)
	if back, _ := h.cmd(r16, len(data), true, nil); !bytes.Equal(back, data) {
		t.Error("READ(16)")
	}
	// Out of range, unknown opcode, short CDB.
	for _, tc := range []struct {
		name     string
		cdb      []byte
		len      int
		in       bool
		key, asc byte
	}{
		{"read past the end", rw10(opRead10, 2047, 2), 1024, true, senseIllegal, ascLBAOutOfRange},
		{"lba beyond", rw10(opWrite10, 5000, 1), 512, false, senseIllegal, ascLBAOutOfRange},
		{"unknown opcode", []byte{0xff, 0, 0, 0, 0, 0}, 0, false, senseIllegal, ascInvalidOpcode},
		{"READ(10) in 6 bytes", []byte{opRead10, 0, 0, 0, 0, 1}, 512, true, senseIllegal, ascInvalidField},
		{"mode page 0x1c", []byte{opModeSense6, 0, 0x1c, 0, 192, 0}, 192, true, senseIllegal, ascInvalidField},
		{"REPORT LUNS alloc 8", []byte{opReportLuns, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0}, 8, true, senseIllegal, ascInvalidField},
	} {
		if _, c := h.cmd(tc.cdb, tc.len, tc.in, make([]byte, tc.len)); c.status != statusCheck {
			t.Errorf("%s: status %d", tc.name, c.status)
			continue
		}
		if k, a := h.sense(); k != tc.key || a != tc.asc {
			t.Errorf("%s: sense %02x/%02x, want %02x/%02x", tc.name, k, a, tc.key, tc.asc)
		}
	}
	if k, _ := h.sense(); k != senseNoSense {
		t.Error("sense not cleared by REQUEST SENSE")
	}
	d, _ = h.cmd([]byte{opModeSense6, 0, 0x3f, 0, 192, 0}, 192, true, nil)
	if len(d) != 24 || d[0] != 23 || d[2]&0x80 != 0 || d[4] != 0x08 {
		t.Errorf("MODE SENSE(6) % x", d)
	}
	d, _ = h.cmd([]byte{opModeSense10, 0, 0x08, 0, 0, 0, 0, 0, 255, 0}, 255, true, nil)
	if len(d) != 28 || binary.BigEndian.Uint16(d) != 26 || d[8] != 0x08 {
		t.Errorf("MODE SENSE(10) % x", d)
	}
	d, _ = h.cmd([]byte{opReportLuns, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}, 16, true, nil)
	if len(d) != 16 || binary.BigEndian.Uint32(d) != 8 {
		t.Errorf("REPORT LUNS % x", d)
	}
	if _, c := h.cmd([]byte{opPreventAllow, 0, 0, 0, 1, 0}, 0, false, nil); c.status != 0 {
		t.Error("PREVENT ALLOW")
	}
	// Eject: the medium is gone until loaded again.
	h.cmd([]byte{opStartStopUnit, 0, 0, 0, 0x02, 0}, 0, false, nil)
	if _, c := h.cmd([]byte{opTestUnitReady, 0, 0, 0, 0, 0}, 0, false, nil); c.status != statusCheck {
		t.Error("TUR after eject")
	} else if k, a := h.sense(); k != senseNotReady || a != ascMediumNotPresnt {
		t.Errorf("sense after eject %x/%x", k, a)
	}
	h.cmd([]byte{opStartStopUnit, 0, 0, 0, 0x03, 0}, 0, false, nil)
	if _, c := h.cmd([]byte{opTestUnitReady, 0, 0, 0, 0, 0}, 0, false, nil); c.status != 0 {
		t.Error("TUR after load")
	}
}

func TestBOTCases(t *testing.T) {
	h := newHost(t, 64)
	// Hi > Di (case 5): INQUIRY of 36 bytes with 100 expected: a short
	// data phase and the residue in the CSW.
	d, c := h.cmd([]byte{opInquiry, 0, 0, 0, 100, 0}, 100, true, nil)
	if len(d) != 36 || c.status != 0 || c.residue != 64 {
		t.Errorf("case 5: %d bytes, %+v", len(d), c)
	}
	// Hi < Di (case 7): READ of 2 blocks with room for 1: phase error.
	if _, c := h.cmd(rw10(opRead10, 0, 2), 512, true, nil); c.status != statusPhaseError {
		t.Errorf("case 7: %+v", c)
	}
	// Hn with data wanted (case 2/3): phase error.
	if _, c := h.cmd(rw10(opRead10, 0, 1), 0, false, nil); c.status != statusPhaseError {
		t.Errorf("case 2: %+v", c)
	}
	// Hi <> Do (case 10): the IN pipe stalls, then the CSW says phase error.
	if _, c := h.cmd(rw10(opWrite10, 0, 1), 512, true, nil); c.status != statusPhaseError {
		t.Errorf("case 10: %+v", c)
	}
	// Ho <> Di (case 8).
	if _, c := h.cmd(rw10(opRead10, 0, 1), 512, false, make([]byte, 512)); c.status != statusPhaseError {
		t.Errorf("case 8: %+v", c)
	}
	// An invalid CBW stalls both pipes until Reset Recovery.
	bad := wire.NewCBW(99, 0, false, []byte{0})
	bad[0] = 'X'
	if x := h.xfer(EndpointOut, bad); x.Status != usbif.StatusStall {
		t.Fatalf("invalid CBW: %v", x.Status)
	}
	h.dev.ClearHalt(EndpointIn)
	h.dev.ClearHalt(EndpointOut)
	if x := h.xfer(EndpointOut, wire.NewCBW(1, 0, false, []byte{0, 0, 0, 0, 0, 0})); x.Status != usbif.StatusStall {
		t.Error("CLEAR_HALT alone ended the stall; BOT wants the reset first")
	}
	if x := h.control(usbif.SetupPacket{RequestType: 0x21, Request: reqReset}, nil); x.Status != usbif.StatusOK {
		t.Fatalf("Bulk-Only Mass Storage Reset: %v", x.Status)
	}
	h.dev.ClearHalt(EndpointIn)
	h.dev.ClearHalt(EndpointOut)
	if _, c := h.cmd([]byte{opTestUnitReady, 0, 0, 0, 0, 0}, 0, false, nil); c.status != 0 {
		t.Errorf("after Reset Recovery: %+v", c)
	}
	if x := h.control(usbif.SetupPacket{RequestType: 0xa1, Request: reqGetMaxLUN, Length: 1}, make([]byte, 1)); x.Status != 0 || x.Actual != 1 || x.Buffer[0] != 0 {
		t.Errorf("Get Max LUN %v", x.Status)
	}
	// A write split over several OUT transfers.
	data := make([]byte, 4*BlockSize)
	rand.Read(data)
	h.tag++
	h.xfer(EndpointOut, wire.NewCBW(h.tag, len(data), false, rw10(opWrite10, 3, 4)))
	h.xfer(EndpointOut, data[:1000])
	h.xfer(EndpointOut, data[1000:])
	if x := h.xfer(EndpointIn, make([]byte, wire.CSWSize)); x.Buffer[12] != 0 {
		t.Errorf("split write status %d", x.Buffer[12])
	}
	// A read split over several IN transfers, and IN submitted before the CBW.
	h.tag++
	in1 := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: EndpointIn, Buffer: make([]byte, 1500), Done: h.done}
	h.dev.Submit(in1) // waits for the CBW
	h.xfer(EndpointOut, wire.NewCBW(h.tag, len(data), true, rw10(opRead10, 3, 4)))
	first := <-h.done
	rest := h.xfer(EndpointIn, make([]byte, len(data)-1500))
	if !bytes.Equal(append(first.Buffer[:first.Actual:first.Actual], rest.Buffer[:rest.Actual]...), data) {
		t.Error("split read differs")
	}
	h.xfer(EndpointIn, make([]byte, wire.CSWSize))
}

func TestStandardRequests(t *testing.T) {
	h := newHost(t, 8)
	x := h.control(usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescDevice << 8, Length: 64}, make([]byte, 64))
	if x.Actual != 18 || x.Buffer[0] != 18 || binary.LittleEndian.Uint16(x.Buffer[8:]) != 0x1209 {
		t.Errorf("device descriptor % x", x.Buffer[:x.Actual])
	}
	x = h.control(usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescConfiguration << 8, Length: 255}, make([]byte, 255))
	if x.Actual != 32 || binary.LittleEndian.Uint16(x.Buffer[2:]) != 32 || x.Buffer[9+5] != 0x08 || x.Buffer[9+7] != 0x50 {
		t.Errorf("configuration % x", x.Buffer[:x.Actual])
	}
	x = h.control(usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescConfiguration << 8, Length: 9}, make([]byte, 9))
	if x.Actual != 9 {
		t.Errorf("configuration header: %d bytes", x.Actual)
	}
	x = h.control(usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescString<<8 | 2, Index: 0x409, Length: 255}, make([]byte, 255))
	if x.Actual != 2+2*len("pvusb emulated disk") || x.Buffer[2] != 'p' {
		t.Errorf("product string % x", x.Buffer[:x.Actual])
	}
	if x := h.control(usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescString<<8 | 9, Length: 255}, make([]byte, 255)); x.Status != usbif.StatusStall {
		t.Error("missing string did not stall")
	}
	if err := h.dev.SetConfiguration(2); err == nil {
		t.Error("configuration 2 accepted")
	}
	if x := h.control(usbif.SetupPacket{RequestType: 0x40, Request: 1}, nil); x.Status != usbif.StatusStall {
		t.Error("vendor request did not stall")
	}
}

func TestReadOnlyAndDurableOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ro.img")
	os.WriteFile(path, make([]byte, 16*BlockSize), 0o600)
	dev, err := Open(path, true)
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, dev: dev, done: make(chan *stub.Transfer, 4)}
	if _, c := h.cmd(rw10(opWrite10, 0, 1), 512, false, make([]byte, 512)); c.status != statusCheck {
		t.Error("write to a read-only disk")
	} else if k, a := h.sense(); k != senseDataProtect || a != ascWriteProtected {
		t.Errorf("sense %x/%x", k, a)
	}
	d, _ := h.cmd([]byte{opModeSense6, 0, 0x3f, 0, 192, 0}, 192, true, nil)
	if d[2]&0x80 == 0 {
		t.Error("MODE SENSE does not say write-protected")
	}
	dev.Close()
	if err := dev.Submit(&stub.Transfer{Type: usbif.TypeBulk, Endpoint: EndpointIn, Buffer: make([]byte, 13), Done: h.done}); err == nil {
		t.Error("submit after close")
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing.img"), false); err == nil {
		t.Error("missing image opened")
	}
}

// FuzzCDB plans any CDB against a small disk: never a panic, and a data
// phase always stays inside the scratch buffer or the image.
func FuzzCDB(f *testing.F) {
	f.Add([]byte{opRead10, 0, 0, 0, 0, 1, 0, 0, 1, 0})
	f.Add([]byte{opInquiry, 1, 0x80, 0, 255, 0})
	f.Add([]byte{opServiceAction16, saReadCapacity16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0})
	f.Add([]byte{opModeSense10, 0, 0x3f, 0, 0, 0, 0, 0xff, 0xff, 0})
	path := filepath.Join(f.TempDir(), "fuzz.img")
	os.WriteFile(path, make([]byte, 64*BlockSize), 0o600)
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer fh.Close()
	f.Fuzz(func(t *testing.T, cdb []byte) {
		d := &Disk{f: fh, blocks: 64, serial: "0123456789ab"}
		p := d.plan(cdb)
		switch {
		case p.fixed != nil && (p.length > len(p.fixed) || p.length > len(d.scratch)):
			t.Fatalf("fixed data phase of %d bytes", p.length)
		case p.fixed == nil && p.dir != dirNone && (p.off < 0 || p.off+int64(p.length) > 64*BlockSize):
			t.Fatalf("stream %d+%d outside the image", p.off, p.length)
		case p.status == statusCheck && p.dir != dirNone:
			t.Fatal("a failed command with a data phase")
		}
	})
}

func TestDirectReadsWhatWasWritten(t *testing.T) {
	img := filepath.Join(t.TempDir(), "d.img")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	os.WriteFile(img, data, 0o600)
	dev, err := Open(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	d := NewDirect(dev)
	buf := make([]byte, 200<<10)
	if err := d.Read(8, buf); err != nil || !bytes.Equal(buf, data[8*512:8*512+len(buf)]) {
		t.Fatalf("read: %v", err)
	}
	if err := d.Read(uint32(len(data)/512), make([]byte, 512)); err == nil {
		t.Fatal("a read past the end succeeded")
	}
}

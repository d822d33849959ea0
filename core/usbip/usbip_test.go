package usbip

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/frontend/enginetest"
	"github.com/pvusb/pvusb/core/usbhost"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/hid"
	"github.com/pvusb/pvusb/stub/msc"
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// The URB-phase headers byte for byte, as usbip_protocol.rst lays them
// out (big-endian; the basic part, then the command's own).
func TestHeadersByteForByte(t *testing.T) {
	for _, tc := range []struct {
		name string
		h    Header
		want string
	}{
		{"CMD_SUBMIT GET_DESCRIPTOR", Header{Command: CmdSubmit, Seqnum: 2, DevID: 0x00010002, Direction: DirIn, Endpoint: 0,
			Flags: URBDirIn, Length: 18, Packets: -1, Setup: [8]byte{0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00}},
			"00000001 00000002 00010002 00000001 00000000 00000200 00000012 00000000 ffffffff 00000000 8006000100001200"},
		{"RET_SUBMIT", Header{Command: RetSubmit, Seqnum: 2, Status: 0, Length: 18, Packets: -1},
			"00000003 00000002 00000000 00000000 00000000 00000000 00000012 00000000 ffffffff 00000000 0000000000000000"},
		{"CMD_UNLINK", Header{Command: CmdUnlink, Seqnum: 7, DevID: 0x00010002, UnlinkSeq: 5},
			"00000002 00000007 00010002 00000000 00000000 00000005 00000000 00000000 00000000 00000000 0000000000000000"},
		{"RET_UNLINK -ECONNRESET", Header{Command: RetUnlink, Seqnum: 7, Status: -104},
			"00000004 00000007 00000000 00000000 00000000 ffffff98 00000000 00000000 00000000 00000000 0000000000000000"},
	} {
		var b [HeaderSize]byte
		tc.h.Encode(&b)
		if want := unhex(tc.want); !bytes.Equal(b[:], want) {
			t.Errorf("%s:\n got % x\nwant % x", tc.name, b, want)
		}
		var back Header
		if err := back.Decode(&b); err != nil || back != tc.h {
			t.Errorf("%s: decode %+v %v", tc.name, back, err)
		}
	}
	var b [HeaderSize]byte
	b[3] = 9
	var h Header
	if err := h.Decode(&b); err == nil {
		t.Error("command 9 decoded")
	}
	d := Device{Busid: "0-1", Busnum: 1, Devnum: 2, Speed: 3, VID: 0x1209, PID: 1, Interfaces: []Interface{{8, 6, 0x50}}}
	enc := d.Encode(true)
	if len(enc) != DeviceSize+4 || enc[256] != '0' || binary.BigEndian.Uint32(enc[288:]) != 1 || enc[312] != 8 {
		t.Errorf("device record % x", enc[256:])
	}
}

// rig: an emulated disk and keyboard behind our backend engine, our
// frontend, enumerated, exported on loopback TCP.
type rig struct {
	ex     *Exporter
	addr   string
	kbd    stub.Device
	cancel context.CancelFunc
}

func newRig(t *testing.T) (*rig, context.Context) {
	t.Helper()
	return newRigDisk(t, 8<<20)
}

// newRigDisk is newRig with a disk of diskSize bytes.
func newRigDisk(t *testing.T, diskSize int) (*rig, context.Context) {
	t.Helper()
	pair := enginetest.New(t, 4)
	f, e, ctx, conn := pair.F, pair.E, pair.Ctx, pair.Conn
	img := filepath.Join(t.TempDir(), "disk.img")
	os.WriteFile(img, make([]byte, diskSize), 0o600)
	disk, _ := msc.Open(img, false)
	kbd := hid.New(hid.Keyboard, nil)
	e.Plug(1, disk)
	e.Plug(2, kbd)
	h := &usbhost.Host{F: f}
	r := &rig{ex: &Exporter{}, kbd: kbd, cancel: pair.Cancel}
	for i := 0; i < 2; i++ {
		ev := <-conn
		d, err := h.Enumerate(ctx, ev.Port, ev.Speed)
		if err != nil {
			t.Fatal(err)
		}
		busid := "0-" + strconv.Itoa(int(ev.Port))
		r.ex.Set(Exported{Dev: Describe(busid, 1, uint32(d.Addr), d.Speed, d.Desc, d.Config), Target: Target{F: f, Port: d.Port, Addr: d.Addr, Types: EndpointTypes(d.Config)}})
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	go r.ex.Serve(ctx, l)
	return r, ctx
}

// Linux's own usbip tool lists our devices.
func TestLinuxUsbipListsOurDevices(t *testing.T) {
	r, _ := newRig(t)
	usbip, err := exec.LookPath("usbip")
	if err != nil {
		t.Fatalf("usbip (Debian package usbip; ./build.sh deps installs it): %v", err)
	}
	_, port, _ := net.SplitHostPort(r.addr)
	out, err := exec.Command(usbip, "--tcp-port", port, "list", "-r", "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("usbip list -r: %v\n%s", err, out)
	}
	for _, want := range []string{"0-1: ", "(1209:0001)", "0-2: ", "(1209:0002)", "08/06/50", "03/01/01"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("usbip list lacks %q:\n%s", want, out)
		}
	}
}

func dial(t *testing.T, r *rig, busid string) *Conn {
	t.Helper()
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Import(c, busid)
	if err != nil {
		t.Fatal(err)
	}
	if d.Busid != busid {
		t.Fatalf("imported %q", d.Busid)
	}
	k := NewConn(c, d)
	t.Cleanup(func() { k.Close() })
	return k
}

func TestImportAndUseADiskOverTCP(t *testing.T) {
	r, _ := newRig(t)
	devs := func() []Device {
		c, _ := net.Dial("tcp", r.addr)
		defer c.Close()
		d, err := Devlist(c)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}()
	if len(devs) != 2 || devs[0].Busid != "0-1" || devs[0].Interfaces[0].Class != 8 {
		t.Fatalf("devlist %+v", devs)
	}
	k := dial(t, r, "0-1")
	// A second import of the same device is refused while the first lives.
	c2, _ := net.Dial("tcp", r.addr)
	if _, err := Import(c2, "0-1"); err == nil {
		t.Fatal("a busy device imported twice")
	}
	c2.Close()
	c3, _ := net.Dial("tcp", r.addr)
	if _, err := Import(c3, "9-9"); err == nil {
		t.Fatal("a missing device imported")
	}
	c3.Close()
	// The guest kernel's first request: the device descriptor.
	res, err := k.Do(DirIn, 0, [8]byte{0x80, 6, 0, 1, 0, 0, 18, 0}, nil, 18)
	if err != nil || res.Status != 0 || res.Actual != 18 || res.Data[8] != 0x09 || res.Data[9] != 0x12 {
		t.Fatalf("GET_DESCRIPTOR %+v %v", res, err)
	}
	// vhci never forwards SET_ADDRESS, but a client may: answered here.
	if res, _ := k.Do(DirOut, 0, [8]byte{0, 5, 9, 0, 0, 0, 0, 0}, nil, 0); res.Status != 0 {
		t.Fatalf("SET_ADDRESS %+v", res)
	}
	if res, _ := k.Do(DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0); res.Status != 0 {
		t.Fatalf("SET_CONFIGURATION %+v", res)
	}
	// WRITE(10) then READ(10) of 1 MiB: one URB each way, larger than the
	// ring's 64 KiB, split here.
	data := make([]byte, 1<<20)
	rand.Read(data)
	bot := func(cdb []byte, n int, in bool, out []byte) []byte {
		cbw := make([]byte, 31)
		binary.LittleEndian.PutUint32(cbw, 0x43425355)
		binary.LittleEndian.PutUint32(cbw[4:], 1)
		binary.LittleEndian.PutUint32(cbw[8:], uint32(n))
		if in {
			cbw[12] = 0x80
		}
		cbw[14] = byte(len(cdb))
		copy(cbw[15:], cdb)
		if res, _ := k.Do(DirOut, 2, [8]byte{}, cbw, 0); res.Status != 0 {
			t.Fatalf("CBW %+v", res)
		}
		var got []byte
		if in {
			res, _ := k.Do(DirIn, 1, [8]byte{}, nil, n)
			if res.Status != 0 || res.Actual != n {
				t.Fatalf("data IN %d/%d status %d", res.Actual, n, res.Status)
			}
			got = res.Data
		} else if res, _ := k.Do(DirOut, 2, [8]byte{}, out, 0); res.Status != 0 || res.Actual != n {
			t.Fatalf("data OUT %d/%d status %d", res.Actual, n, res.Status)
		}
		if res, _ := k.Do(DirIn, 1, [8]byte{}, nil, 13); res.Status != 0 || res.Data[12] != 0 {
			t.Fatalf("CSW %+v", res)
		}
		return got
	}
	bot([]byte{0x2a, 0, 0, 0, 0, 8, 0, 0x08, 0, 0}, len(data), false, data)
	if got := bot([]byte{0x28, 0, 0, 0, 0, 8, 0, 0x08, 0, 0}, len(data), true, nil); !bytes.Equal(got, data) {
		t.Fatal("read back over USB/IP differs")
	}
}

// CMD_UNLINK of a URB the device holds answers RET_UNLINK -ECONNRESET
// and no RET_SUBMIT; of one long done, RET_UNLINK 0.
func TestUnlinkOverTCP(t *testing.T) {
	r, _ := newRig(t)
	k := dial(t, r, "0-2")
	k.Do(DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0)
	seq, ch, err := k.Submit(DirIn, 1, [8]byte{}, 0, 10, nil, 8, nil) // the keyboard holds it: no key pressed
	if err != nil {
		t.Fatal(err)
	}
	k.Unlink(seq)
	select {
	case res := <-ch:
		if !res.Unlinked || res.Status != -104 {
			t.Fatalf("%+v", res)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("unlink never answered")
	}
	hid.Feed(r.kbd, "tap a")
	res, _ := k.Do(DirIn, 1, [8]byte{}, nil, 8)
	if res.Status != 0 || res.Data[2] != 0x04 {
		t.Fatalf("key report %+v", res)
	}
	if err := k.Unlink(res.Seqnum); err != nil { // long done: RET_UNLINK 0, nothing else
		t.Fatal(err)
	}
	if res, _ := k.Do(DirIn, 1, [8]byte{}, nil, 8); res.Status != 0 { // the release report
		t.Fatalf("after the late unlink %+v", res)
	}
}

func TestMalformedClientIsDropped(t *testing.T) {
	r, _ := newRig(t)
	k := dial(t, r, "0-1")
	var hb [HeaderSize]byte
	(&Header{Command: CmdSubmit, Seqnum: 1, Direction: 5, Length: 1}).Encode(&hb)
	k.c.Write(hb[:])
	buf := make([]byte, 1)
	k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := k.c.Read(buf); err == nil {
		t.Fatal("connection still open after a malformed command")
	}
	// The device is free again for a well-behaved client.
	for i := 0; ; i++ {
		c, _ := net.Dial("tcp", r.addr)
		_, err := Import(c, "0-1")
		c.Close()
		if err == nil {
			break
		}
		if i > 500 {
			t.Fatal("device stayed busy")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestVHCISysfs(t *testing.T) {
	dir := t.TempDir()
	v := VHCI{Dir: dir}
	if _, err := v.FreePort(); err == nil {
		t.Fatal("a missing vhci-hcd gave a port")
	}
	status := "hub port sta spd dev      sockfd local_busid\n" +
		"hs  0000 006 003 00010002 000003 1-1\n" +
		"hs  0001 004 000 00000000 000000 0-0\n" +
		"ss  0008 004 000 00000000 000000 0-0\n"
	os.WriteFile(filepath.Join(dir, "status"), []byte(status), 0o644)
	ps, err := v.Ports()
	if err != nil || len(ps) != 3 || ps[0].DevID != 0x00010002 || ps[0].Status != 6 {
		t.Fatalf("%+v %v", ps, err)
	}
	if p, err := v.FreePort(); err != nil || p != 1 {
		t.Fatalf("free port %d %v", p, err)
	}
	os.WriteFile(filepath.Join(dir, "attach"), nil, 0o644)
	ours, port, err := v.Attach(0x00010003, usbif.SpeedHigh)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	line, _ := os.ReadFile(filepath.Join(dir, "attach"))
	f := strings.Fields(string(line))
	if port != 1 || len(f) != 4 || f[0] != "1" || f[2] != strconv.Itoa(0x00010003) || f[3] != "3" {
		t.Fatalf("attach line %q", line)
	}
}

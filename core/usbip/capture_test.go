package usbip

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pdu is one URB-phase message cut out of a capture.
type pdu struct {
	h    Header
	raw  []byte // the 48 header bytes as they were on the wire
	data []byte // OUT payload (CMD_SUBMIT) or IN payload (RET_SUBMIT)
	iso  []byte // isochronous packet descriptors
}

// wire is the message as it was sent.
func (p pdu) wire() []byte {
	return append(append(append([]byte(nil), p.raw...), p.data...), p.iso...)
}

// split cuts a capture into messages: body says how many bytes of
// transfer data follow each header (isochronous descriptors come after
// them) or stops the list. A capture ends wherever its limit fell: a
// message cut short is left out.
func split(b []byte, body func(h Header) (data int, stop bool, err error)) ([]pdu, error) {
	var out []pdu
	for len(b) >= HeaderSize {
		var p pdu
		p.raw = b[:HeaderSize]
		if err := p.h.Decode((*[HeaderSize]byte)(p.raw)); err != nil {
			return out, fmt.Errorf("message %d: %w", len(out), err)
		}
		data, stop, err := body(p.h)
		if err != nil {
			return out, fmt.Errorf("message %d: %w", len(out), err)
		}
		n := HeaderSize + data + isoSize(p.h)
		if stop || len(b) < n {
			break
		}
		p.data = b[HeaderSize : HeaderSize+data]
		p.iso = b[HeaderSize+data : n]
		out = append(out, p)
		b = b[n:]
	}
	return out, nil
}

// isoSize is how many bytes of isochronous descriptors follow h's data.
func isoSize(h Header) int { return max(0, int(h.Packets)) * IsoDescSize }

// splitCommands cuts what a client (vhci-hcd) sent into messages.
func splitCommands(b []byte) ([]pdu, error) {
	return split(b, func(h Header) (int, bool, error) {
		switch {
		case h.Command == CmdUnlink:
			return 0, false, nil
		case h.Command != CmdSubmit:
			return 0, false, fmt.Errorf("command %#x from a client", h.Command)
		case h.Length < 0 || h.Length > MaxTransfer:
			return 0, false, fmt.Errorf("length %d", h.Length)
		case h.Direction == DirOut:
			return int(h.Length), false, nil
		}
		return 0, false, nil
	})
}

// retData is how many bytes of data follow a reply: a RET_SUBMIT to an
// IN command carries what it read.
func retData(h Header, cmds map[uint32]Header) int {
	if h.Command == RetSubmit && cmds[h.Seqnum].Direction == DirIn {
		return int(h.Length)
	}
	return 0
}

// splitReturns cuts what a server sent into messages; the commands say
// which RET_SUBMITs carry data (IN). The command capture fills first (it
// carries the OUT data), so replies to commands after its end close the
// list; a reply to an unknown seqnum before that is an error.
func splitReturns(b []byte, cmds map[uint32]Header) ([]pdu, error) {
	var last uint32
	for s := range cmds {
		last = max(last, s)
	}
	return split(b, func(h Header) (int, bool, error) {
		switch {
		case h.Command == RetUnlink:
			return 0, false, nil
		case h.Command != RetSubmit:
			return 0, false, fmt.Errorf("command %#x from a server", h.Command)
		}
		if _, ok := cmds[h.Seqnum]; !ok {
			if h.Seqnum > last {
				return 0, true, nil // past the command capture's end
			}
			return 0, false, fmt.Errorf("RET_SUBMIT for seqnum %d, which no command in the capture has", h.Seqnum)
		}
		return retData(h, cmds), false, nil
	})
}

// The URB phase as Linux's vhci-hcd speaks it, captured in the Xen lab
// (pvusb usbfront --capture in a domU, scenario pvusb-frontend) and kept
// in testdata/vhci: NAME.cmd is what the kernel sent, NAME.ret what we
// answered. The kernel's encoder is the oracle: every header must decode
// and encode back to the same 48 bytes, the kernel's stream must say what
// we expect of it, our replies must be well-formed for it, and replaying
// the kernel's commands against our server must be answered as they were.
// PVUSB_VHCI_CAPTURE=DIR checks a fresh capture instead (the lab does).
func TestKernelVHCIStreams(t *testing.T) {
	dir := filepath.Join("testdata", "vhci")
	if d := os.Getenv("PVUSB_VHCI_CAPTURE"); d != "" {
		dir = d
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*.cmd"))
	if len(names) == 0 {
		t.Fatalf("no captures (*.cmd) in %s", dir)
	}
	for _, name := range names {
		base := strings.TrimSuffix(name, ".cmd")
		t.Run(filepath.Base(base), func(t *testing.T) {
			cb, err := os.ReadFile(base + ".cmd")
			if err != nil {
				t.Fatal(err)
			}
			rb, err := os.ReadFile(base + ".ret")
			if err != nil {
				t.Fatal(err)
			}
			cmds := checkKernelCommands(t, cb)
			rets := checkOurReturns(t, rb, cmds)
			replayCapture(t, cmds, rets, strings.HasPrefix(filepath.Base(base), "msc-pvusb-"))
		})
	}
}

// checkKernelCommands decodes and checks what vhci-hcd sent.
func checkKernelCommands(t *testing.T, cb []byte) []pdu {
	t.Helper()
	cmds, err := splitCommands(cb)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) < 8 {
		t.Fatalf("only %d whole commands in %d bytes", len(cmds), len(cb))
	}
	var setConfig, cbw bool
	for i, c := range cmds {
		var back [HeaderSize]byte
		c.h.Encode(&back)
		if !bytes.Equal(back[:], c.raw) {
			t.Errorf("command %d (seq %d) does not encode back:\nkernel % x\nours   % x", i, c.h.Seqnum, c.raw, back)
		}
		if c.h.DevID != cmds[0].h.DevID {
			t.Errorf("command %d: devid %#x, the connection's is %#x", i, c.h.DevID, cmds[0].h.DevID)
		}
		if i > 0 && c.h.Seqnum <= cmds[i-1].h.Seqnum {
			t.Errorf("command %d: seqnum %d after %d", i, c.h.Seqnum, cmds[i-1].h.Seqnum)
		}
		if c.h.Command != CmdSubmit {
			continue
		}
		if c.h.Direction > DirIn || c.h.Endpoint > 15 {
			t.Errorf("command %d: direction %d endpoint %d", i, c.h.Direction, c.h.Endpoint)
		}
		if c.h.Endpoint == 0 {
			if wl := binary.LittleEndian.Uint16(c.h.Setup[6:]); int32(wl) != c.h.Length {
				t.Errorf("command %d: control transfer of %d bytes, wLength %d", i, c.h.Length, wl)
			}
			switch {
			case c.h.Setup[0] == 0 && c.h.Setup[1] == 5:
				t.Errorf("command %d: SET_ADDRESS reached us; vhci-hcd answers it itself", i)
			case c.h.Setup[0] == 0 && c.h.Setup[1] == 9:
				setConfig = true
			}
		}
		if c.h.Direction == DirOut && c.h.Endpoint != 0 && len(c.data) == 31 && string(c.data[:4]) == "USBC" {
			cbw = true
		}
	}
	// Linux's hub driver asks for the device descriptor first.
	if f := cmds[0].h; f.Command != CmdSubmit || f.Endpoint != 0 || f.Direction != DirIn || f.Setup[0] != 0x80 || f.Setup[1] != 6 || f.Setup[3] != 1 {
		t.Errorf("first command %+v, not GET_DESCRIPTOR(DEVICE)", f)
	}
	if !setConfig {
		t.Error("no SET_CONFIGURATION in the capture")
	}
	if !cbw {
		t.Error("no Bulk-Only command block wrapper: usb-storage never spoke")
	}
	return cmds
}

// checkOurReturns decodes and checks what we answered.
func checkOurReturns(t *testing.T, rb []byte, cmds []pdu) []pdu {
	t.Helper()
	bySeq := map[uint32]Header{}
	for _, c := range cmds {
		bySeq[c.h.Seqnum] = c.h
	}
	rets, err := splitReturns(rb, bySeq)
	if err != nil {
		t.Fatal(err)
	}
	if len(rets) < 8 {
		t.Fatalf("only %d whole replies in %d bytes", len(rets), len(rb))
	}
	seen := map[uint32]bool{}
	for i, r := range rets {
		var back [HeaderSize]byte
		r.h.Encode(&back)
		if !bytes.Equal(back[:], r.raw) {
			t.Errorf("reply %d does not encode back", i)
		}
		if seen[r.h.Seqnum] {
			t.Errorf("reply %d: seqnum %d answered twice", i, r.h.Seqnum)
		}
		seen[r.h.Seqnum] = true
		if r.h.DevID != 0 || r.h.Direction != 0 || r.h.Endpoint != 0 {
			t.Errorf("reply %d: devid/direction/ep %d/%d/%d, the protocol wants 0", i, r.h.DevID, r.h.Direction, r.h.Endpoint)
		}
		if r.h.Status > 0 {
			t.Errorf("reply %d: status %d", i, r.h.Status)
		}
		if c := bySeq[r.h.Seqnum]; r.h.Command == RetSubmit && r.h.Length > c.Length {
			t.Errorf("reply %d: actual %d of a %d-byte transfer", i, r.h.Length, c.Length)
		}
	}
	return rets
}

// replayCapture sends the kernel's commands, one after the other, to our
// server in front of an emulated disk. They are as the kernel wrote them,
// quirks included: Linux 6.1's vhci-hcd sends number_of_packets 0 (not
// the 0xffffffff usbip_protocol.rst asks for) on non-isochronous
// transfers, leaves the previous control request's SETUP bytes in bulk
// commands, and leaks internal transfer_flags (URB_DIR_IN 0x200,
// URB_DMA_MAP_SG 0x40000); the server must take all of it. Every CMD_SUBMIT must be answered;
// with exact set, each answer's status and length must be the captured
// one (the capture came from the same emulated disk).
func replayCapture(t *testing.T, cmds, rets []pdu, exact bool) {
	t.Helper()
	r, _ := newRigDisk(t, 32<<20) // the lab's image size
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := Import(c, "0-1"); err != nil {
		t.Fatal(err)
	}
	want := map[uint32]Header{}
	for _, p := range rets {
		want[p.h.Seqnum] = p.h
	}
	in := map[uint32]Header{}
	for _, p := range cmds {
		in[p.h.Seqnum] = p.h
	}
	got := make(chan pdu, len(cmds))
	readErr := make(chan error, 1)
	go func() {
		var hb [HeaderSize]byte
		for {
			if _, err := io.ReadFull(c, hb[:]); err != nil {
				readErr <- err
				return
			}
			var p pdu
			p.raw = append([]byte(nil), hb[:]...)
			if err := p.h.Decode(&hb); err != nil {
				readErr <- err
				return
			}
			if _, err := io.CopyN(io.Discard, c, int64(retData(p.h, in)+isoSize(p.h))); err != nil {
				readErr <- err
				return
			}
			got <- p
		}
	}()
	answered := 0
	for i, p := range cmds {
		if _, err := c.Write(p.wire()); err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		if p.h.Command != CmdSubmit {
			continue
		}
		select {
		case a := <-got:
			if a.h.Command != RetSubmit || a.h.Seqnum != p.h.Seqnum {
				t.Fatalf("command %d (seq %d): answered %+v", i, p.h.Seqnum, a.h)
			}
			answered++
			w, ok := want[p.h.Seqnum]
			switch {
			case !ok:
			case exact && (a.h.Status != w.Status || a.h.Length != w.Length):
				t.Errorf("command %d (seq %d, setup % x, %d bytes ep %d dir %d): replay status %d actual %d, captured %d %d",
					i, p.h.Seqnum, p.h.Setup, p.h.Length, p.h.Endpoint, p.h.Direction, a.h.Status, a.h.Length, w.Status, w.Length)
			case !exact && p.h.Endpoint != 0 && w.Status == 0 && a.h.Status != 0:
				// Another device: its descriptors differ (the stick has a
				// serial string, ours not), its Bulk-Only traffic must not.
				t.Errorf("command %d (seq %d, ep %d): replay status %d, the real device's 0", i, p.h.Seqnum, p.h.Endpoint, a.h.Status)
			}
		case err := <-readErr:
			t.Fatalf("command %d: connection: %v", i, err)
		case <-time.After(20 * time.Second):
			t.Fatalf("command %d (seq %d) never answered", i, p.h.Seqnum)
		}
	}
	if answered < len(rets)/2 {
		t.Fatalf("only %d commands replayed", answered)
	}
}

// The tap keeps the first bytes each way and writes them once both are
// full, or at close.
func TestTapKeepsTheFirstBytesEachWay(t *testing.T) {
	dir := t.TempDir()
	a, b := net.Pipe()
	tap := NewTap(a, filepath.Join(dir, "x"), 8)
	go func() {
		b.Write([]byte("0123456789"))
		io.ReadFull(b, make([]byte, 12))
		b.Close()
	}()
	buf := make([]byte, 10)
	if _, err := io.ReadFull(tap, buf); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.cmd")); err == nil {
		t.Fatal("saved before the reply direction was full")
	}
	if _, err := tap.Write([]byte("abcdefghijkl")); err != nil {
		t.Fatal(err)
	}
	cmd, err := os.ReadFile(filepath.Join(dir, "x.cmd"))
	if err != nil || string(cmd) != "01234567" {
		t.Fatalf("x.cmd %q %v", cmd, err)
	}
	if ret, _ := os.ReadFile(filepath.Join(dir, "x.ret")); string(ret) != "abcdefgh" {
		t.Fatalf("x.ret %q", ret)
	}
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	// A short connection is saved at close.
	a2, b2 := net.Pipe() // new names: the first peer still holds b
	tap = NewTap(a2, filepath.Join(dir, "y"), 1<<10)
	go func() { b2.Write([]byte("hi")); b2.Close() }()
	io.ReadAll(tap)
	tap.Close()
	if cmd, _ := os.ReadFile(filepath.Join(dir, "y.cmd")); string(cmd) != "hi" {
		t.Fatalf("y.cmd %q", cmd)
	}
	if ret, err := os.ReadFile(filepath.Join(dir, "y.ret")); err != nil || len(ret) != 0 {
		t.Fatalf("y.ret %q %v", ret, err)
	}
	// A capture that cannot be written says so.
	a3, _ := net.Pipe()
	tap = NewTap(a3, filepath.Join(dir, "no", "such", "z"), 4)
	if err := tap.Close(); err == nil {
		t.Fatal("an unwritable capture reported no error")
	}
}

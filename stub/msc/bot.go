package msc

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"sync"

	wire "github.com/pvusb/pvusb/core/bot" // the BOT wire format; bot is this device
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/emu"
)

// Endpoints and BOT constants (USB MSC BOT 1.0).
const (
	EndpointIn  = 0x81
	EndpointOut = 0x02

	reqReset     = 0xff // Bulk-Only Mass Storage Reset
	reqGetMaxLUN = 0xfe
)

type botState int

const (
	stateCBW botState = iota
	stateDataIn
	stateDataOut
	stateCSW
)

// bot is the Bulk-Only Transport function of the device.
type bot struct {
	mu   sync.Mutex
	disk *Disk

	state     botState
	tag       uint32
	hostLen   int // dCBWDataTransferLength
	hostMoved int // bytes the host sent or received in the data phase
	p         plan
	moved     int  // bytes of the command's own data moved
	status    byte // the CSW status
	haltIn    bool
	haltOut   bool
	needReset bool // an invalid CBW: stall until Reset Recovery (BOT §6.6.1)
	pending   []*stub.Transfer
	closed    bool
}

// Open serves the image at path (its size a multiple of 512 bytes) as a
// high-speed USB disk.
func Open(path string, readOnly bool) (stub.Device, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("emulated disk: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("emulated disk: %w", err)
	}
	if st.Size() < BlockSize {
		f.Close()
		return nil, fmt.Errorf("emulated disk %s: %d bytes, need at least one %d-byte block", path, st.Size(), BlockSize)
	}
	sum := sha256.Sum256([]byte(path))
	serial := hex.EncodeToString(sum[:6])
	b := &bot{disk: &Disk{f: f, blocks: uint64(st.Size()) / BlockSize, readOnly: readOnly, serial: serial}}
	d := emu.Descriptors{
		Device: emu.DeviceDesc(0, 0, 0, 0x1209, 0x0001, 0x0100),
		Config: emu.Config(1, 100,
			emu.Interface(0, 2, 0x08, 0x06, 0x50, 0), // mass storage, SCSI transparent, Bulk-Only
			emu.Endpoint(EndpointIn, 0x02, 512, 0),
			emu.Endpoint(EndpointOut, 0x02, 512, 0)),
		Strings: map[uint8]string{1: "pvusb", 2: "pvusb emulated disk", 3: serial},
	}
	return emu.New(d, b, usbif.SpeedHigh), nil
}

// Control answers the two BOT class requests.
func (b *bot) Control(s usbif.SetupPacket, buf []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case s.RequestType == 0x21 && s.Request == reqReset && s.Length == 0:
		b.resetLocked()
		return 0, nil
	case s.RequestType == 0xa1 && s.Request == reqGetMaxLUN && len(buf) >= 1:
		buf[0] = 0
		return 1, nil
	}
	return 0, stub.ErrStall
}

// resetLocked is the Bulk-Only Mass Storage Reset: back to waiting for a
// CBW; halted endpoints stay halted until CLEAR_FEATURE (Reset Recovery).
func (b *bot) resetLocked() {
	b.state = stateCBW
	b.needReset = false
	for _, t := range b.pending {
		t.Complete(usbif.StatusConnReset, 0)
	}
	b.pending = b.pending[:0]
}

// Reset is a port reset: everything back to power-on.
func (b *bot) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resetLocked()
	b.haltIn, b.haltOut = false, false
}

// ClearHalt clears an endpoint, unless an invalid CBW still demands the
// Bulk-Only Mass Storage Reset first.
func (b *bot) ClearHalt(ep uint8) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.needReset {
		return nil // the request succeeds; the endpoint stays stalled
	}
	switch ep {
	case EndpointIn:
		b.haltIn = false
		b.serveInLocked()
	case EndpointOut:
		b.haltOut = false
	default:
		return stub.ErrStall
	}
	return nil
}

// Cancel completes a waiting IN transfer early.
func (b *bot) Cancel(t *stub.Transfer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, p := range b.pending {
		if p == t {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			t.Complete(usbif.StatusConnReset, 0)
			return
		}
	}
}

// Close makes the image durable and closes it.
func (b *bot) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	for _, t := range b.pending {
		t.Complete(usbif.StatusNoDev, 0)
	}
	b.pending = nil
	serr := b.disk.f.Sync()
	cerr := b.disk.f.Close()
	if serr != nil {
		return fmt.Errorf("emulated disk: sync on release: %w", serr)
	}
	return cerr
}

// Submit takes bulk transfers: OUT carries CBWs and write data and is
// served at once; IN waits until there is data or a CSW to send.
func (b *bot) Submit(t *stub.Transfer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return stub.ErrNoDevice
	}
	switch t.Endpoint {
	case EndpointOut:
		if b.haltOut || b.needReset {
			t.Complete(usbif.StatusStall, 0)
			return nil
		}
		b.outLocked(t)
	case EndpointIn:
		if b.haltIn || b.needReset {
			t.Complete(usbif.StatusStall, 0)
			return nil
		}
		b.pending = append(b.pending, t)
	default:
		return stub.ErrStall
	}
	b.serveInLocked()
	return nil
}

func (b *bot) outLocked(t *stub.Transfer) {
	switch b.state {
	case stateCBW:
		b.commandLocked(t)
	case stateDataOut:
		buf := t.Buffer
		want := min(len(buf), b.p.length-b.moved)
		if want > 0 && b.p.status == statusGood {
			if !b.disk.writeAt(buf[:want], b.p.off+int64(b.moved)) {
				b.p.status = statusCheck
			}
		}
		b.moved += max(want, 0)
		b.hostMoved += len(buf)
		t.Complete(usbif.StatusOK, len(buf))
		if b.hostMoved >= b.hostLen || len(buf) == 0 {
			b.state = stateCSW
		}
	default:
		// Data where none belongs: the host lost the phase.
		b.haltOut = true
		t.Complete(usbif.StatusStall, 0)
	}
}

// commandLocked parses a CBW and sets up the data phase, sorting the
// host's expectation against the command's (BOT §6.7, the thirteen cases).
func (b *bot) commandLocked(t *stub.Transfer) {
	c := t.Buffer
	if len(c) != wire.CBWSize || binary.LittleEndian.Uint32(c) != wire.CBWSignature || c[13]&0x0f != 0 || c[14] == 0 || c[14] > 16 {
		// Invalid or not meaningful: stall both pipes until Reset Recovery.
		b.needReset, b.haltIn, b.haltOut = true, true, true
		t.Complete(usbif.StatusStall, 0)
		return
	}
	t.Complete(usbif.StatusOK, wire.CBWSize)
	b.tag = binary.LittleEndian.Uint32(c[4:])
	b.hostLen = int(binary.LittleEndian.Uint32(c[8:]))
	hostIn := c[12]&0x80 != 0
	b.p = b.disk.plan(c[15 : 15+int(c[14])])
	b.moved, b.hostMoved, b.status = 0, 0, b.p.status
	switch {
	case b.hostLen == 0:
		if b.p.dir != dirNone { // cases 2, 3: the device wants data the host did not offer
			b.status = statusPhaseError
		}
		b.state = stateCSW
	case hostIn && b.p.dir == dirOut, !hostIn && b.p.dir == dirIn: // cases 8, 10
		b.status = statusPhaseError
		if hostIn {
			b.haltIn = true
		} else {
			b.haltOut = true
		}
		b.state = stateCSW
	case hostIn: // cases 4, 5, 6, 7
		if b.p.length > b.hostLen {
			b.status = statusPhaseError // case 7: send what the host takes
			b.p.length = b.hostLen
		}
		b.state = stateDataIn
	default: // cases 9, 11, 12, 13
		if b.p.dir == dirNone {
			b.haltOut = true // case 9: nothing to take; the residue says so
			b.state = stateCSW
			break
		}
		if b.p.length > b.hostLen {
			b.status = statusPhaseError // case 13
			b.p.length = b.hostLen
		}
		b.state = stateDataOut
	}
}

// popPending drops the first waiting transfer, keeping the array: the
// queue is at most a ring's worth, and reslicing from the front would
// make every later append allocate.
func (b *bot) popPending() {
	n := copy(b.pending, b.pending[1:])
	b.pending[n] = nil
	b.pending = b.pending[:n]
}

// serveInLocked completes waiting IN transfers with data, then the CSW.
func (b *bot) serveInLocked() {
	for len(b.pending) > 0 && !b.haltIn {
		t := b.pending[0]
		switch b.state {
		case stateDataIn:
			n := min(len(t.Buffer), b.p.length-b.moved, b.hostLen-b.hostMoved)
			if b.p.fixed != nil {
				copy(t.Buffer, b.p.fixed[b.moved:b.moved+n])
			} else if n > 0 && !b.disk.readAt(t.Buffer[:n], b.p.off+int64(b.moved)) {
				b.p.status, b.status = statusCheck, statusCheck
			}
			b.moved += n
			b.hostMoved += n
			if b.moved >= b.p.length || b.hostMoved >= b.hostLen || n < len(t.Buffer) {
				b.state = stateCSW // a short packet ends the data phase
			}
			st := usbif.StatusOK
			if n < len(t.Buffer) && t.ShortNotOK {
				st = usbif.StatusRemoteIO
			}
			b.popPending()
			t.Complete(st, n)
		case stateCSW:
			if len(t.Buffer) < wire.CSWSize {
				b.popPending()
				t.Complete(usbif.StatusBabble, 0)
				continue
			}
			if b.p.sync && b.status == statusGood {
				if err := b.disk.f.Sync(); err != nil {
					b.status = statusCheck
					b.disk.last = sense{senseMediumError, ascWriteError, 0}
				}
			}
			if b.status == statusGood && b.p.status != statusGood {
				b.status = b.p.status
			}
			w := t.Buffer[:wire.CSWSize]
			binary.LittleEndian.PutUint32(w[0:], wire.CSWSignature)
			binary.LittleEndian.PutUint32(w[4:], b.tag)
			binary.LittleEndian.PutUint32(w[8:], uint32(max(b.hostLen-b.hostMoved, 0)))
			w[12] = b.status
			b.state = stateCBW
			b.popPending()
			t.Complete(usbif.StatusOK, wire.CSWSize)
		default:
			return // waiting for the CBW or for OUT data
		}
	}
}

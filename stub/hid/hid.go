// Package hid is pvusb's emulated HID boot keyboard and boot mouse (HID
// 1.11, appendix B): report descriptors, the class requests GET_REPORT,
// SET_REPORT, GET_IDLE, SET_IDLE, GET_PROTOCOL and SET_PROTOCOL, and an
// interrupt IN endpoint whose reports come from input events read from a
// file or fifo, one event per line (see ParseEvent). Good enough for
// Linux's usbhid (and usbkbd/usbmouse) to bind and deliver input.
package hid

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/emu"
)

// Kind is what the device emulates.
type Kind int

// Kinds.
const (
	Keyboard Kind = iota
	Mouse
)

// EndpointIn is the interrupt IN endpoint of both kinds.
const EndpointIn = 0x81

// Class requests (HID 1.11 §7.2).
const (
	reqGetReport   = 0x01
	reqGetIdle     = 0x02
	reqGetProtocol = 0x03
	reqSetReport   = 0x09
	reqSetIdle     = 0x0a
	reqSetProtocol = 0x0b
)

// KeyboardReport is the boot keyboard report descriptor (HID 1.11 B.1):
// modifiers, a reserved byte, six key codes; five LEDs out.
var KeyboardReport = []byte{
	0x05, 0x01, 0x09, 0x06, 0xa1, 0x01, // Generic Desktop, Keyboard, Application
	0x05, 0x07, 0x19, 0xe0, 0x29, 0xe7, 0x15, 0x00, 0x25, 0x01, 0x75, 0x01, 0x95, 0x08, 0x81, 0x02, // modifiers
	0x95, 0x01, 0x75, 0x08, 0x81, 0x01, // reserved byte
	0x95, 0x05, 0x75, 0x01, 0x05, 0x08, 0x19, 0x01, 0x29, 0x05, 0x91, 0x02, // LEDs
	0x95, 0x01, 0x75, 0x03, 0x91, 0x01, // LED padding
	0x95, 0x06, 0x75, 0x08, 0x15, 0x00, 0x25, 0x65, 0x05, 0x07, 0x19, 0x00, 0x29, 0x65, 0x81, 0x00, // keys
	0xc0,
}

// MouseReport is a boot-compatible mouse report descriptor: three
// buttons, X and Y, and a wheel after them (ignored in boot protocol).
var MouseReport = []byte{
	0x05, 0x01, 0x09, 0x02, 0xa1, 0x01, 0x09, 0x01, 0xa1, 0x00, // Generic Desktop, Mouse, Application, Pointer, Physical
	0x05, 0x09, 0x19, 0x01, 0x29, 0x03, 0x15, 0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01, 0x81, 0x02, // buttons
	0x95, 0x01, 0x75, 0x05, 0x81, 0x01, // padding
	0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x09, 0x38, 0x15, 0x81, 0x25, 0x7f, 0x75, 0x08, 0x95, 0x03, 0x81, 0x06, // X, Y, wheel (relative)
	0xc0, 0xc0,
}

// maxQueued bounds reports waiting for the host; the event reader blocks
// beyond it, so nothing is lost and memory stays bounded.
const maxQueued = 1024

// device is the HID function.
type device struct {
	kind   Kind
	report []byte // the report descriptor

	mu       sync.Mutex
	queue    [][]byte // reports not yet taken by the host
	current  []byte   // the last report sent: GET_REPORT and idle repeats
	pending  []*stub.Transfer
	idle     uint8 // SET_IDLE duration, 4 ms units; 0 = only on change
	protocol uint8 // 0 boot, 1 report
	leds     uint8
	closed   bool
	space    *sync.Cond // the reader waits here while the queue is full
	timer    *time.Timer

	cancel context.CancelFunc
	done   chan struct{}
}

// Open emulates kind, reading input events from path (a file or fifo;
// "" for none). The reader stops at the end of a regular file; a fifo is
// opened read-write so writers may come and go.
func Open(kind Kind, path string) (stub.Device, error) {
	var src io.ReadCloser
	if path != "" {
		f, err := openSource(path)
		if err != nil {
			return nil, fmt.Errorf("emulated HID: %w", err)
		}
		src = f
	}
	return New(kind, src), nil
}

func openSource(path string) (*os.File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode()&os.ModeNamedPipe != 0 {
		return os.OpenFile(path, os.O_RDWR, 0)
	}
	return os.Open(path)
}

// New emulates kind with events read from src (nil: none).
func New(kind Kind, src io.ReadCloser) stub.Device {
	d := &device{kind: kind, protocol: 1, done: make(chan struct{})}
	d.space = sync.NewCond(&d.mu)
	var desc emu.Descriptors
	switch kind {
	case Keyboard:
		d.report, d.current = KeyboardReport, make([]byte, 8)
		desc = descriptors(0x0002, 1, "pvusb emulated keyboard", KeyboardReport, 8)
	default:
		d.report, d.current = MouseReport, make([]byte, 4)
		desc = descriptors(0x0003, 2, "pvusb emulated mouse", MouseReport, 4)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if src != nil {
		go d.read(ctx, src)
	} else {
		close(d.done)
	}
	return emu.New(desc, d, usbif.SpeedFull)
}

func descriptors(pid uint16, protocol uint8, product string, report []byte, packet uint16) emu.Descriptors {
	hidDesc := []byte{9, usbif.DescHID, 0x11, 0x01, 0, 1, usbif.DescReport, byte(len(report)), byte(len(report) >> 8)}
	return emu.Descriptors{
		Device: emu.DeviceDesc(0, 0, 0, 0x1209, pid, 0x0100),
		Config: emu.Config(1, 100,
			emu.Interface(0, 1, 0x03, 0x01, protocol, 0), // HID, boot interface
			hidDesc,
			emu.Endpoint(EndpointIn, 0x03, packet, 10)), // interrupt, every 10 ms
		Strings: map[uint8]string{1: "pvusb", 2: product, 3: fmt.Sprintf("HID%04X", pid)},
	}
}

// read turns events into reports until the source ends or Close.
func (d *device) read(ctx context.Context, src io.ReadCloser) {
	defer close(d.done)
	go func() {
		<-ctx.Done()
		src.Close() // unblocks the scanner
	}()
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 4096), 4096)
	var st inputState
	for sc.Scan() {
		ev, err := ParseEvent(d.kind, sc.Text())
		if err != nil || ev == nil {
			continue // a comment, a blank line, or a line we cannot read
		}
		for _, r := range st.apply(d.kind, ev) {
			if !d.enqueue(r) {
				return
			}
		}
	}
}

// enqueue adds a report, waiting while the queue is full; false once closed.
func (d *device) enqueue(r []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.queue) >= maxQueued && !d.closed {
		d.space.Wait()
	}
	if d.closed {
		return false
	}
	d.queue = append(d.queue, r)
	d.serveLocked()
	return true
}

// Feed adds input events directly (tests, the demo), as lines would.
func Feed(dev stub.Device, lines ...string) error {
	e, ok := dev.(*emu.Device)
	if !ok {
		return errors.New("hid: not an emulated HID device")
	}
	d, ok := e.Function().(*device)
	if !ok {
		return errors.New("hid: not an emulated HID device")
	}
	var st inputState
	for _, l := range lines {
		ev, err := ParseEvent(d.kind, l)
		if err != nil {
			return err
		}
		for _, r := range st.apply(d.kind, ev) {
			if !d.enqueue(r) {
				return errors.New("hid: device closed")
			}
		}
	}
	return nil
}

// serveLocked hands queued reports to waiting IN transfers.
func (d *device) serveLocked() {
	for len(d.pending) > 0 && len(d.queue) > 0 {
		t := d.pending[0]
		d.pending = d.pending[1:]
		r := d.queue[0]
		d.queue = d.queue[1:]
		d.current = r
		d.space.Signal()
		t.Complete(usbif.StatusOK, copy(t.Buffer, d.wire(r)))
	}
	d.armIdleLocked()
}

// wire is a report as sent: a boot-protocol mouse sends three bytes.
func (d *device) wire(r []byte) []byte {
	if d.kind == Mouse && d.protocol == 0 && len(r) > 3 {
		return r[:3]
	}
	return r
}

// armIdleLocked repeats the current report every idle×4 ms while the host
// waits and nothing changes (HID 1.11 §7.2.4).
func (d *device) armIdleLocked() {
	if d.idle == 0 || len(d.pending) == 0 || d.closed {
		return
	}
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timer = time.AfterFunc(time.Duration(d.idle)*4*time.Millisecond, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.pending) > 0 && len(d.queue) == 0 && d.idle != 0 {
			t := d.pending[0]
			d.pending = d.pending[1:]
			t.Complete(usbif.StatusOK, copy(t.Buffer, d.wire(d.current)))
		}
		d.armIdleLocked()
	})
}

// Control answers the HID class requests.
func (d *device) Control(s usbif.SetupPacket, buf []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.Index != 0 {
		return 0, stub.ErrStall // one interface
	}
	switch {
	case s.RequestType == 0x81 && s.Request == usbif.ReqGetDescriptor:
		switch uint8(s.Value >> 8) {
		case usbif.DescReport:
			return copy(buf, d.report), nil
		case usbif.DescHID:
			h := []byte{9, usbif.DescHID, 0x11, 0x01, 0, 1, usbif.DescReport, byte(len(d.report)), byte(len(d.report) >> 8)}
			return copy(buf, h), nil
		}
	case s.RequestType == 0xa1 && s.Request == reqGetReport:
		if s.Value>>8 != 1 || len(buf) == 0 { // input reports only
			return 0, stub.ErrStall
		}
		return copy(buf, d.wire(d.current)), nil
	case s.RequestType == 0x21 && s.Request == reqSetReport:
		if s.Value>>8 != 2 || d.kind != Keyboard || len(buf) < 1 { // the LED output report
			return 0, stub.ErrStall
		}
		d.leds = buf[0] & 0x1f
		return 1, nil
	case s.RequestType == 0xa1 && s.Request == reqGetIdle:
		if len(buf) < 1 {
			return 0, stub.ErrStall
		}
		buf[0] = d.idle
		return 1, nil
	case s.RequestType == 0x21 && s.Request == reqSetIdle:
		d.idle = uint8(s.Value >> 8)
		d.armIdleLocked()
		return 0, nil
	case s.RequestType == 0xa1 && s.Request == reqGetProtocol:
		if len(buf) < 1 {
			return 0, stub.ErrStall
		}
		buf[0] = d.protocol
		return 1, nil
	case s.RequestType == 0x21 && s.Request == reqSetProtocol:
		if s.Value > 1 {
			return 0, stub.ErrStall
		}
		d.protocol = uint8(s.Value)
		return 0, nil
	}
	return 0, stub.ErrStall
}

// Submit queues an interrupt IN transfer until a report is there.
func (d *device) Submit(t *stub.Transfer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return stub.ErrNoDevice
	}
	if t.Endpoint != EndpointIn || t.Type != usbif.TypeIntr {
		return stub.ErrStall
	}
	d.pending = append(d.pending, t)
	d.serveLocked()
	return nil
}

// Cancel completes a waiting transfer early.
func (d *device) Cancel(t *stub.Transfer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, p := range d.pending {
		if p == t {
			d.pending = append(d.pending[:i], d.pending[i+1:]...)
			t.Complete(usbif.StatusConnReset, 0)
			return
		}
	}
}

// ClearHalt: the endpoint never halts.
func (d *device) ClearHalt(ep uint8) error {
	if ep != EndpointIn {
		return stub.ErrStall
	}
	return nil
}

// Reset returns to report protocol, no idle repeats, LEDs off.
func (d *device) Reset() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.protocol, d.idle, d.leds = 1, 0, 0
	if d.timer != nil {
		d.timer.Stop()
	}
}

// LEDs are the keyboard LEDs the host last set (bit 0 Num Lock, 1 Caps
// Lock, 2 Scroll Lock).
func LEDs(dev stub.Device) uint8 {
	if e, ok := dev.(*emu.Device); ok {
		if d, ok := e.Function().(*device); ok {
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.leds
		}
	}
	return 0
}

// Close stops the reader and fails waiting transfers.
func (d *device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for _, t := range d.pending {
		t.Complete(usbif.StatusNoDev, 0)
	}
	d.pending = nil
	if d.timer != nil {
		d.timer.Stop()
	}
	d.space.Broadcast()
	d.mu.Unlock()
	d.cancel()
	<-d.done
	return nil
}

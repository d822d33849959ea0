// Package acm is pvusb's emulated CDC-ACM serial port (USB CDC 1.2 and
// its PSTN subclass): a communication interface with the header, call
// management, ACM and union functional descriptors and a notification
// endpoint, and a data interface with bulk IN and OUT. The other end is
// a pseudo-terminal in dom0: bytes the guest sends come out of the pty,
// bytes written to the pty reach the guest. Good enough for Linux's
// cdc-acm to bind and make a /dev/ttyACM of it.
package acm

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/emu"
)

// Endpoints.
const (
	EndpointNotify = 0x83 // interrupt IN: SERIAL_STATE
	EndpointIn     = 0x81 // bulk IN: pty -> guest
	EndpointOut    = 0x02 // bulk OUT: guest -> pty
)

// Class requests (CDC PSTN 1.2 §6.3).
const (
	reqSetLineCoding       = 0x20
	reqGetLineCoding       = 0x21
	reqSetControlLineState = 0x22
	reqSendBreak           = 0x23
)

// maxBuffered bounds bytes read from the pty and not yet taken by the
// guest: beyond it the reader waits (the pty then blocks its writers).
const maxBuffered = 64 << 10

// port is the ACM function.
type port struct {
	master *os.File // the pty's master side, on the netpoller
	slave  *os.File // held open so the master never reads EIO
	link   string   // the symlink to the slave we made, "" for none
	tty    string   // /dev/pts/N

	mu       sync.Mutex
	coding   [7]byte // dwDTERate, bCharFormat, bParityType, bDataBits
	lines    uint16  // DTR (bit 0), RTS (bit 1)
	in       []byte  // pty bytes waiting for the guest
	inWait   []*stub.Transfer
	notify   []*stub.Transfer
	state    []byte // a SERIAL_STATE notification waiting to be sent
	outQ     chan *stub.Transfer
	room     *sync.Cond
	closed   bool
	readDone chan struct{}
	outDone  chan struct{}
}

// Open makes a pty and serves it as a USB serial port; link, if not
// empty, becomes a symlink to the pty's slave (/dev/pts/N) so programs in
// dom0 find it by name.
func Open(link string) (stub.Device, error) {
	mfd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("emulated serial: open /dev/ptmx: %w", err)
	}
	master := os.NewFile(uintptr(mfd), "ptmx")
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err == nil {
		err = unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0)
	}
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("emulated serial: unlock pty: %w", err)
	}
	tty := fmt.Sprintf("/dev/pts/%d", n)
	slave, err := os.OpenFile(tty, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, fmt.Errorf("emulated serial: %w", err)
	}
	if err := makeRaw(int(slave.Fd())); err != nil {
		master.Close()
		slave.Close()
		return nil, fmt.Errorf("emulated serial: raw mode: %w", err)
	}
	if link != "" {
		if st, err := os.Lstat(link); err == nil {
			if st.Mode()&os.ModeSymlink == 0 {
				master.Close()
				slave.Close()
				return nil, fmt.Errorf("emulated serial: %s exists and is not a symlink", link)
			}
			os.Remove(link)
		}
		if err := os.Symlink(tty, link); err != nil {
			master.Close()
			slave.Close()
			return nil, fmt.Errorf("emulated serial: %w", err)
		}
	}
	p := &port{master: master, slave: slave, link: link, tty: tty, outQ: make(chan *stub.Transfer, 32),
		readDone: make(chan struct{}), outDone: make(chan struct{})}
	p.room = sync.NewCond(&p.mu)
	// 115200 8N1 until the guest says otherwise.
	p.coding = [7]byte{0x00, 0xc2, 0x01, 0x00, 0, 0, 8}
	go p.read()
	go p.write()
	return emu.New(descriptors(), p, usbif.SpeedHigh), nil
}

// makeRaw puts the slave in raw mode: bytes pass untouched both ways.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func descriptors() emu.Descriptors {
	functional := []byte{
		5, 0x24, 0x00, 0x10, 0x01, // Header, CDC 1.10
		5, 0x24, 0x01, 0x00, 0x01, // Call Management: none, data interface 1
		4, 0x24, 0x02, 0x02, // ACM: line coding and serial state
		5, 0x24, 0x06, 0x00, 0x01, // Union: control 0, subordinate 1
	}
	return emu.Descriptors{
		Device: emu.DeviceDesc(0x02, 0, 0, 0x1209, 0x0004, 0x0100),
		Config: emu.Config(2, 100,
			emu.Interface(0, 1, 0x02, 0x02, 0x01, 0), // CDC, ACM, AT commands
			functional,
			emu.Endpoint(EndpointNotify, 0x03, 16, 9), // interrupt, 2^(9-1) microframes = 32 ms
			emu.Interface(1, 2, 0x0a, 0x00, 0x00, 0),  // CDC data
			emu.Endpoint(EndpointIn, 0x02, 512, 0),
			emu.Endpoint(EndpointOut, 0x02, 512, 0)),
		Strings: map[uint8]string{1: "pvusb", 2: "pvusb emulated serial port", 3: "ACM0001"},
	}
}

// TTY is the pty slave the port's other end is (/dev/pts/N).
func TTY(dev stub.Device) string {
	if e, ok := dev.(*emu.Device); ok {
		if p, ok := e.Function().(*port); ok {
			return p.tty
		}
	}
	return ""
}

// read moves pty output to the guest until Close.
func (p *port) read() {
	defer close(p.readDone)
	buf := make([]byte, 16<<10)
	for {
		p.mu.Lock()
		for len(p.in) >= maxBuffered && !p.closed {
			p.room.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		n, err := p.master.Read(buf)
		p.mu.Lock()
		p.in = append(p.in, buf[:n]...)
		p.serveInLocked()
		p.mu.Unlock()
		if err != nil {
			return // closed
		}
	}
}

// write moves guest data into the pty, one OUT transfer at a time, in
// order; a transfer completes when its bytes are in.
func (p *port) write() {
	defer close(p.outDone)
	for t := range p.outQ {
		_, err := p.master.Write(t.Buffer)
		if err != nil {
			t.Complete(usbif.StatusNoDev, 0)
			continue
		}
		t.Complete(usbif.StatusOK, len(t.Buffer))
	}
}

func (p *port) serveInLocked() {
	for len(p.inWait) > 0 && len(p.in) > 0 {
		t := p.inWait[0]
		p.inWait = p.inWait[1:]
		n := copy(t.Buffer, p.in)
		p.in = p.in[n:]
		t.Complete(usbif.StatusOK, n)
	}
	if len(p.in) < maxBuffered {
		p.room.Signal()
	}
	for len(p.notify) > 0 && p.state != nil {
		t := p.notify[0]
		p.notify = p.notify[1:]
		t.Complete(usbif.StatusOK, copy(t.Buffer, p.state))
		p.state = nil
	}
}

// Control answers the PSTN class requests on the communication interface.
func (p *port) Control(s usbif.SetupPacket, buf []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.Index != 0 || s.RequestType&usbif.RequestTypeMask != usbif.RequestTypeClass {
		return 0, stub.ErrStall
	}
	switch s.Request {
	case reqSetLineCoding:
		if s.In() || len(buf) != 7 {
			return 0, stub.ErrStall
		}
		stop, parity, bits := buf[4], buf[5], buf[6]
		rate := uint32(buf[0]) | uint32(buf[1])<<8 | uint32(buf[2])<<16 | uint32(buf[3])<<24
		if rate == 0 || stop > 2 || parity > 4 || (bits < 5 || bits > 8) && bits != 16 {
			return 0, stub.ErrStall
		}
		copy(p.coding[:], buf)
		return 7, nil
	case reqGetLineCoding:
		if !s.In() || len(buf) < 7 {
			return 0, stub.ErrStall
		}
		return copy(buf, p.coding[:]), nil
	case reqSetControlLineState:
		if s.In() || s.Length != 0 {
			return 0, stub.ErrStall
		}
		p.lines = s.Value & 0x3
		// Answer with SERIAL_STATE: the other end is there (DCD, DSR)
		// while the guest holds DTR.
		var bits byte
		if p.lines&1 != 0 {
			bits = 0x03
		}
		p.state = []byte{0xa1, 0x20, 0, 0, 0, 0, 2, 0, bits, 0}
		p.serveInLocked()
		return 0, nil
	case reqSendBreak:
		if s.In() || s.Length != 0 {
			return 0, stub.ErrStall
		}
		return 0, nil
	}
	return 0, stub.ErrStall
}

// Submit takes bulk data and notification transfers.
func (p *port) Submit(t *stub.Transfer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return stub.ErrNoDevice
	}
	switch {
	case t.Endpoint == EndpointOut && t.Type == usbif.TypeBulk:
		select {
		case p.outQ <- t:
		default:
			return stub.ErrBusy
		}
	case t.Endpoint == EndpointIn && t.Type == usbif.TypeBulk:
		p.inWait = append(p.inWait, t)
		p.serveInLocked()
	case t.Endpoint == EndpointNotify && t.Type == usbif.TypeIntr:
		p.notify = append(p.notify, t)
		p.serveInLocked()
	default:
		return stub.ErrStall
	}
	return nil
}

// Cancel completes a waiting IN transfer early; an OUT transfer already
// queued for the pty completes when written.
func (p *port) Cancel(t *stub.Transfer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range []*[]*stub.Transfer{&p.inWait, &p.notify} {
		for i, w := range *q {
			if w == t {
				*q = append((*q)[:i], (*q)[i+1:]...)
				t.Complete(usbif.StatusConnReset, 0)
				return
			}
		}
	}
}

// ClearHalt: the endpoints never halt.
func (p *port) ClearHalt(ep uint8) error {
	switch ep {
	case EndpointIn, EndpointOut, EndpointNotify:
		return nil
	}
	return stub.ErrStall
}

// Reset forgets the line state.
func (p *port) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines, p.state = 0, nil
}

// Close fails waiting transfers, closes the pty and removes the symlink.
func (p *port) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for _, t := range append(p.inWait, p.notify...) {
		t.Complete(usbif.StatusNoDev, 0)
	}
	p.inWait, p.notify = nil, nil
	p.room.Broadcast()
	p.mu.Unlock()
	close(p.outQ)
	err := errors.Join(p.master.Close(), p.slave.Close())
	<-p.readDone
	<-p.outDone
	if p.link != "" {
		if target, lerr := os.Readlink(p.link); lerr == nil && target == p.tty {
			os.Remove(p.link)
		}
	}
	return err
}

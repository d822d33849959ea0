package usbfs

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// file is the usbfs device file as the Device uses it: the real one (an
// fd on the Go netpoller) or, in tests, a fake kernel that reads and
// writes the URBs in the Device's memory the way devio.c does.
type file interface {
	// ioctl calls req with arg, an address inside the Device's memory
	// (or a plain integer argument), and returns the ioctl's result.
	ioctl(req, arg uintptr) (int, error)
	// wait calls drain whenever completed URBs may be waiting and
	// returns when drain returns true or the file is closed.
	wait(drain func() bool) error
	// read returns the descriptors: the device descriptor followed by
	// every configuration's full set (usbdev_read).
	read() ([]byte, error)
	close() error
}

// Memory layout: per slot a header area (the URB and up to 128 iso
// packet descriptors, the most usbfs accepts) and a buffer area (an
// 8-byte SETUP packet before the largest transfer the ring carries), then
// a scratch area for ioctl arguments. All of it is anonymous mmap'd
// memory: the kernel holds the URB and its buffer until it is reaped, so
// they must not live on the Go heap, where the collector could move or
// free them.
const (
	// Slots bounds the URBs in flight on one device: a vusb has at most
	// 16 requests in flight, and unlinked URBs leave room while they drain.
	Slots         = 32
	maxIsoPackets = 128
	hdrStride     = 2048 // >= URBSize + 128*IsoPacketDescSize = 1592
	bufStride     = 69632
	bufOffset     = Slots * hdrStride
	scratchOffset = bufOffset + Slots*bufStride
	scratchSize   = 4096
	memSize       = scratchOffset + scratchSize
	reapSlot      = 0   // scratch: the kernel writes the reaped URB's address here
	argSlot       = 512 // scratch: other ioctl arguments
)

// Device is a host USB device driven through usbfs: stub.Device.
// Submit, Cancel and the standard requests come from one goroutine;
// completions are reaped by another and handed back through each
// transfer's Done channel.
type Device struct {
	f      file
	busid  string
	id     stub.Identity
	speed  usbif.Speed
	desc   []byte // the usbfs dump: device descriptor + configurations
	log    *slog.Logger
	onGone func()

	mem  []byte
	base uintptr

	mu       sync.Mutex
	slots    [Slots]urbSlot
	inflight int
	config   uint8   // the active configuration's value (0 = unconfigured)
	claimed  []uint8 // interfaces we took
	gone     bool
	closing  bool
	idle     chan struct{} // closed when inflight reaches 0 while closing
	reaped   chan struct{} // closed when the reaper returns
	closeErr error
	closed   sync.Once
}

type urbSlot struct {
	t         *stub.Transfer
	discarded bool
	ctrl      bool // control: data follows the SETUP packet
}

// Options of a Device.
type Options struct {
	Busid    string
	Identity stub.Identity
	Speed    usbif.Speed
	Config   uint8 // the active configuration (sysfs bConfigurationValue)
	Log      *slog.Logger
	// OnGone is called once, from the reaper, when the device is unplugged
	// (every URB has been handed back by then).
	OnGone func()
}

// newDevice takes over f: maps the URB memory, reads the descriptors,
// claims every interface of the active configuration (detaching kernel
// drivers) and starts the reaper.
func newDevice(f file, o Options) (*Device, error) {
	d, err := allocDevice(o)
	if err != nil {
		f.close()
		return nil, err
	}
	if err := d.start(f); err != nil {
		return nil, err
	}
	return d, nil
}

// allocDevice maps the memory the kernel will read URBs from and write
// results to.
func allocDevice(o Options) (*Device, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	mem, err := unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("usb %s: map URB memory: %w", o.Busid, err)
	}
	return &Device{busid: o.Busid, id: o.Identity, speed: o.Speed, log: o.Log.With("busid", o.Busid),
		onGone: o.OnGone, mem: mem, base: addrOf(mem), config: o.Config, reaped: make(chan struct{})}, nil
}

// start takes over f.
func (d *Device) start(f file) error {
	d.f = f
	desc, err := f.read()
	if err == nil {
		_, err = usbdesc.ParseDevice(desc)
	}
	if err != nil {
		f.close()
		unix.Munmap(d.mem)
		return fmt.Errorf("usb %s: descriptors: %w", d.busid, err)
	}
	d.desc = desc
	if err := d.claimAll(); err != nil {
		d.log.Warn("usbfs: claiming interfaces", "err", err)
	}
	go d.reap()
	return nil
}

// DeviceDescriptor is the device descriptor.
func (d *Device) DeviceDescriptor() []byte { return d.desc[:usbdesc.DeviceSize] }

// Identity is the device's identity as sysfs reports it.
func (d *Device) Identity() stub.Identity { return d.id }

// Speed is the device's speed.
func (d *Device) Speed() usbif.Speed { return d.speed }

// Busid is the device's sysfs name.
func (d *Device) Busid() string { return d.busid }

func (d *Device) hdr(i int) []byte { return d.mem[i*hdrStride : (i+1)*hdrStride] }
func (d *Device) buf(i int) []byte {
	return d.mem[bufOffset+i*bufStride : bufOffset+(i+1)*bufStride]
}
func (d *Device) scratch(off, n int) []byte {
	return d.mem[scratchOffset+off : scratchOffset+off+n]
}
func (d *Device) addr(b []byte) uintptr { return d.base + uintptr(offsetIn(d.mem, b)) }

// Submit starts a transfer with one USBDEVFS_SUBMITURB.
func (d *Device) Submit(t *stub.Transfer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gone || d.closing {
		return stub.ErrNoDevice
	}
	i := -1
	for k := range d.slots {
		if d.slots[k].t == nil {
			i = k
			break
		}
	}
	if i < 0 {
		return stub.ErrBusy
	}
	u, err := d.encode(i, t)
	if err != nil {
		return err
	}
	if _, err := d.f.ioctl(IoctlSubmitURB, d.addr(u)); err != nil {
		return submitError(err)
	}
	d.slots[i] = urbSlot{t: t, ctrl: t.Type == usbif.TypeCtrl}
	d.inflight++
	return nil
}

// encode lays transfer t out in slot i: the URB, its iso packet
// descriptors, and its buffer (SETUP packet first for control, OUT data
// copied in, iso packets packed one after the other as usbfs wants them).
func (d *Device) encode(i int, t *stub.Transfer) ([]byte, error) {
	h, b := d.hdr(i), d.buf(i)
	in := t.Endpoint&0x80 != 0
	u := URB{Endpoint: t.Endpoint, UserContext: uint64(i) + 1}
	data := b
	switch t.Type {
	case usbif.TypeCtrl:
		u.Type, u.Endpoint = URBTypeControl, 0
		t.Setup.Encode((*[8]byte)(b[:8]))
		data = b[8:]
		in = t.Setup.In()
		u.BufferLength = int32(8 + len(t.Buffer))
	case usbif.TypeBulk, usbif.TypeIntr:
		u.Type = URBTypeBulk // usbfs promotes bulk on an interrupt endpoint to interrupt
		if t.Type == usbif.TypeIntr {
			u.Type = URBTypeInterrupt
		}
		u.BufferLength = int32(len(t.Buffer))
	case usbif.TypeIsoc:
		if len(t.Packets) == 0 || len(t.Packets) > maxIsoPackets {
			return nil, fmt.Errorf("%w: %d isochronous packets (1..%d)", stub.ErrInvalid, len(t.Packets), maxIsoPackets)
		}
		u.Type, u.Flags, u.Packets = URBTypeIso, URBISOASAP, int32(len(t.Packets))
		off := 0
		for k, p := range t.Packets {
			if p.Offset < 0 || p.Length < 0 || p.Offset+p.Length > len(t.Buffer) || off+p.Length > len(data) {
				return nil, fmt.Errorf("%w: iso packet %d (offset %d, length %d) outside %d bytes", stub.ErrInvalid, k, p.Offset, p.Length, len(t.Buffer))
			}
			EncodeIso(h, k, IsoPacket{Length: uint32(p.Length)})
			if !in {
				copy(data[off:], t.Buffer[p.Offset:p.Offset+p.Length])
			}
			off += p.Length
		}
		u.BufferLength = int32(off)
	default:
		return nil, fmt.Errorf("%w: pipe type %d", stub.ErrInvalid, t.Type)
	}
	if len(t.Buffer) > len(data) {
		return nil, fmt.Errorf("%w: %d bytes (at most %d)", stub.ErrInvalid, len(t.Buffer), len(data))
	}
	if in && t.ShortNotOK && t.Type != usbif.TypeCtrl && t.Type != usbif.TypeIsoc {
		u.Flags |= URBShortNotOK // usbfs allows it on IN only
	}
	if !in && t.Type != usbif.TypeIsoc {
		copy(data, t.Buffer)
	}
	u.Buffer = uint64(d.addr(b))
	u.Encode(h)
	return h, nil
}

// submitError maps a SUBMITURB failure: the URB was not started.
func submitError(err error) error {
	switch {
	case errors.Is(err, unix.ENODEV), errors.Is(err, unix.ESHUTDOWN):
		return fmt.Errorf("%w: %v", stub.ErrNoDevice, err)
	case errors.Is(err, unix.EPIPE):
		return fmt.Errorf("%w: %v", stub.ErrStall, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EMSGSIZE):
		// ENOENT: no such endpoint in the current alternate setting.
		return fmt.Errorf("%w: %v", stub.ErrInvalid, err)
	}
	return fmt.Errorf("%w: %v", stub.ErrBusy, err)
}

// Cancel discards an in-flight URB (USBDEVFS_DISCARDURB); the kernel
// still hands it back, with -ENOENT or -ECONNRESET, to be reaped.
func (d *Device) Cancel(t *stub.Transfer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.slots {
		s := &d.slots[i]
		if s.t == t && !s.discarded {
			s.discarded = true
			// EINVAL: it completed meanwhile and waits to be reaped.
			_, _ = d.f.ioctl(IoctlDiscardURB, d.addr(d.hdr(i)))
			return
		}
	}
}

// reap hands completed URBs back until the device is gone or closed.
func (d *Device) reap() {
	defer close(d.reaped)
	err := d.f.wait(d.drain)
	d.mu.Lock()
	gone := d.gone
	d.mu.Unlock()
	if err != nil && !gone {
		d.log.Debug("usbfs: reaper stopped", "err", err)
	}
}

// drain reaps every completed URB (USBDEVFS_REAPURBNDELAY until EAGAIN).
// It returns true when nothing more will ever be reaped: the device is
// gone (ENODEV once every URB is back, usbfs' REAP_AFTER_DISCONNECT).
func (d *Device) drain() bool {
	ptr := d.scratch(reapSlot, 8)
	for {
		_, err := d.f.ioctl(IoctlReapURBNDelay, d.addr(ptr))
		switch {
		case err == nil:
			d.finish(uintptr(le.Uint64(ptr)))
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			return false
		}
		d.disconnected(err)
		return true
	}
}

// finish completes the transfer whose URB the kernel handed back.
func (d *Device) finish(urbAddr uintptr) {
	off := urbAddr - d.base
	i := int(off / hdrStride)
	if urbAddr < d.base || off%hdrStride != 0 || i >= Slots {
		d.log.Error("usbfs: the kernel reaped a URB that is not ours", "addr", urbAddr)
		return
	}
	d.mu.Lock()
	s := d.slots[i]
	if s.t == nil {
		d.mu.Unlock()
		d.log.Error("usbfs: reaped an idle slot", "slot", i)
		return
	}
	var u URB
	h := d.hdr(i)
	u.Decode(h)
	t, b := s.t, d.buf(i)
	if s.ctrl {
		b = b[8:]
	}
	st := stub.StatusOfErrno(u.Status)
	actual := int(u.ActualLength)
	if actual < 0 || actual > len(t.Buffer) {
		actual, st = 0, usbif.StatusShutdown
	}
	in := t.Endpoint&0x80 != 0
	if s.ctrl {
		in = t.Setup.In()
	}
	if t.Type == usbif.TypeIsoc {
		t.StartFrame, t.ErrorCount = int(u.StartFrame), int(u.ErrorCount)
		off, sum := 0, 0
		for k := range t.Packets {
			p := &t.Packets[k]
			r := DecodeIso(h, k)
			p.Actual, p.Status = min(int(r.ActualLength), p.Length), stub.StatusOfErrno(int32(r.Status))
			if in {
				copy(t.Buffer[p.Offset:p.Offset+p.Actual], b[off:off+p.Actual])
			}
			off += p.Length
			sum += p.Actual
		}
		actual = sum
	} else if in {
		copy(t.Buffer[:actual], b[:actual])
	}
	d.slots[i] = urbSlot{}
	d.inflight--
	if d.closing && d.inflight == 0 && d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
	d.mu.Unlock()
	t.Complete(st, actual)
}

// disconnected is the end of the device: whatever the kernel did not hand
// back is answered here, and the owner is told once.
func (d *Device) disconnected(err error) {
	d.mu.Lock()
	if d.gone {
		d.mu.Unlock()
		return
	}
	d.gone = true
	var lost []*stub.Transfer
	for i := range d.slots {
		if t := d.slots[i].t; t != nil {
			lost = append(lost, t)
			d.slots[i] = urbSlot{}
		}
	}
	d.inflight = 0
	if d.idle != nil {
		close(d.idle)
		d.idle = nil
	}
	closing := d.closing
	d.mu.Unlock()
	for _, t := range lost {
		t.Complete(usbif.StatusNoDev, 0)
	}
	if !closing {
		d.log.Info("usbfs: device unplugged", "err", err)
		if d.onGone != nil {
			// Not on the reaper: the owner's unplug closes this device,
			// and Close waits for the reaper.
			go d.onGone()
		}
	}
}

// ctl runs a synchronous ioctl whose argument is written into scratch
// memory by put (nil: no argument; the value is passed as is).
func (d *Device) ctl(op string, req uintptr, put func([]byte) []byte, value uintptr) error {
	arg := value
	if put != nil {
		arg = d.addr(put(d.scratch(argSlot, scratchSize-argSlot)))
	}
	if _, err := d.f.ioctl(req, arg); err != nil {
		return fmt.Errorf("usb %s: %s: %w", d.busid, op, err)
	}
	return nil
}

func u32Arg(v uint32) func([]byte) []byte {
	return func(b []byte) []byte { le.PutUint32(b, v); return b[:4] }
}

// claimAll takes every interface of the active configuration from the
// kernel drivers that hold it (USBDEVFS_DISCONNECT_CLAIM, except from
// usbfs itself: a second claim of ours must not kick ourselves).
func (d *Device) claimAll() error {
	d.claimed = d.claimed[:0]
	if d.config == 0 {
		return nil
	}
	cb := usbdesc.ConfigBytes(d.desc, d.config)
	if cb == nil {
		return fmt.Errorf("usb %s: configuration %d not among the descriptors", d.busid, d.config)
	}
	c, _, err := usbdesc.ParseConfig(cb)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range c.InterfaceNumbers() {
		err := d.ctl("claim interface", IoctlDisconnectClaim, func(b []byte) []byte {
			return DisconnectClaimArg(b, uint32(n), DisconnectClaimExceptDriver, "usbfs")
		}, 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.claimed = append(d.claimed, n)
	}
	return errors.Join(errs...)
}

// releaseAll gives the interfaces back; with reattach, kernel drivers may
// bind them again (USBDEVFS_IOCTL → USBDEVFS_CONNECT), as libusb does.
func (d *Device) releaseAll(reattach bool) error {
	var errs []error
	for _, n := range d.claimed {
		if err := d.ctl("release interface", IoctlReleaseInterface, u32Arg(uint32(n)), 0); err != nil {
			errs = append(errs, err)
			continue
		}
		if reattach {
			err := d.ctl("reattach kernel driver", IoctlIoctl, func(b []byte) []byte { return IoctlArg(b, uint32(n), IoctlConnect) }, 0)
			if err != nil && !errors.Is(err, unix.ENODATA) { // ENODATA: no driver wants it
				errs = append(errs, err)
			}
		}
	}
	d.claimed = d.claimed[:0]
	return errors.Join(errs...)
}

// Reset resets the device (USBDEVFS_RESET). The interfaces are released
// first: a reset unbinds usbfs and the kernel would rebind its own
// drivers; they are claimed again afterwards (libusb does the same).
func (d *Device) Reset() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gone {
		return stub.ErrNoDevice
	}
	rerr := d.releaseAll(false)
	err := d.ctl("reset", IoctlReset, nil, 0)
	return errors.Join(rerr, err, d.claimAll())
}

// SetConfiguration selects a configuration (USBDEVFS_SETCONFIGURATION).
// usbfs refuses while any interface is claimed, so ours are released
// first and the new configuration's interfaces claimed after.
func (d *Device) SetConfiguration(value uint8) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gone {
		return stub.ErrNoDevice
	}
	if err := d.releaseAll(false); err != nil {
		d.log.Warn("usbfs: releasing interfaces for SET_CONFIGURATION", "err", err)
	}
	v := uintptr(value)
	if value == 0 && usbdesc.ConfigBytes(d.desc, 0) == nil {
		v = ^uintptr(0) // -1: unconfigure (0 would select a configuration numbered 0)
	}
	err := d.ctl(fmt.Sprintf("set configuration %d", value), IoctlSetConfiguration, u32Arg(uint32(v)), 0)
	if err == nil {
		d.config = value
	}
	if cerr := d.claimAll(); cerr != nil {
		d.log.Warn("usbfs: claiming interfaces after SET_CONFIGURATION", "err", cerr)
	}
	return stallOn(err)
}

// SetInterface selects an alternate setting (USBDEVFS_SETINTERFACE).
func (d *Device) SetInterface(iface, alt uint8) error {
	return stallOn(d.ctl(fmt.Sprintf("set interface %d alt %d", iface, alt), IoctlSetInterface,
		func(b []byte) []byte { return SetInterfaceArg(b, uint32(iface), uint32(alt)) }, 0))
}

// ClearHalt clears a halted endpoint and resets its data toggle on both
// sides (USBDEVFS_CLEAR_HALT; a raw CLEAR_FEATURE would leave the host's
// toggle stale).
func (d *Device) ClearHalt(ep uint8) error {
	return stallOn(d.ctl(fmt.Sprintf("clear halt of endpoint 0x%02x", ep), IoctlClearHalt, u32Arg(uint32(ep)), 0))
}

// stallOn maps a failed standard request: the device is gone, or it (or
// the kernel) refused it, which the guest sees as a stall.
func stallOn(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%w: %v", stub.ErrNoDevice, err)
	}
	return fmt.Errorf("%w: %v", stub.ErrStall, err)
}

// closeGrace bounds how long Close waits for discarded URBs to come back.
const closeGrace = 2 * time.Second

// Close discards every URB in flight, waits for them to be handed back,
// gives the interfaces back to the kernel's drivers, and closes the file.
func (d *Device) Close() error {
	d.closed.Do(func() {
		d.mu.Lock()
		d.closing = true
		if d.inflight > 0 {
			d.idle = make(chan struct{})
			for i := range d.slots {
				if s := &d.slots[i]; s.t != nil && !s.discarded {
					s.discarded = true
					_, _ = d.f.ioctl(IoctlDiscardURB, d.addr(d.hdr(i)))
				}
			}
		}
		idle := d.idle
		d.mu.Unlock()
		if idle != nil {
			select {
			case <-idle:
			case <-time.After(closeGrace):
				d.log.Error("usbfs: URBs not handed back after discard; closing anyway")
			}
		}
		d.mu.Lock()
		var rerr error
		if !d.gone {
			rerr = d.releaseAll(true)
		}
		d.mu.Unlock()
		// Closing the file kills whatever is left (usbdev_release) and
		// stops the reaper; only then may the memory go.
		cerr := d.f.close()
		<-d.reaped
		d.mu.Lock()
		var lost []*stub.Transfer
		for i := range d.slots { // never handed back: answer them here
			if t := d.slots[i].t; t != nil {
				lost = append(lost, t)
				d.slots[i] = urbSlot{}
			}
		}
		d.inflight = 0
		d.mu.Unlock()
		merr := unix.Munmap(d.mem)
		for _, t := range lost {
			t.Complete(usbif.StatusNoDev, 0)
		}
		d.closeErr = errors.Join(rerr, cerr, merr)
	})
	return d.closeErr
}

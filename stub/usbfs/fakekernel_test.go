package usbfs

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/usbif"
)

// fakeKernel plays devio.c for one device: it reads the URBs the Device
// wrote into its memory at SUBMITURB (copying OUT data then, as usbfs
// does), and at REAPURBNDELAY writes the results back into the user URB
// and buffer and the URB's address into the reap slot. A scripted device
// behind it answers per endpoint.
type fakeKernel struct {
	desc []byte

	mu        sync.Mutex
	mem       []byte
	base      uintptr
	pending   []*fakeURB
	completed []*fakeURB
	gone      bool
	closed    bool
	kick      chan struct{}
	done      chan struct{}
	calls     []string // synchronous ioctls, decoded, in order
	submits   int
	fail      map[uintptr]unix.Errno // next error per ioctl number
	hold      map[uint8]bool         // endpoints whose URBs wait for release
	short     int                    // bulk IN answers this many bytes fewer
	outData   map[uint8][]byte       // what OUT endpoints received
	isoOut    [][]byte               // OUT iso packets as the device saw them
	bogusReap uintptr                // next reap hands back this address
}

type fakeURB struct {
	user    uintptr // the URB's address in the Device's memory
	u       URB
	iso     []IsoPacket
	out     []byte // OUT data copied at submit
	setup   usbif.SetupPacket
	status  int32
	actual  int32
	inData  []byte
	errs    int32
	started int32
}

func newFakeKernel(desc []byte) *fakeKernel {
	return &fakeKernel{desc: desc, kick: make(chan struct{}, 1), done: make(chan struct{}),
		fail: map[uintptr]unix.Errno{}, hold: map[uint8]bool{}, outData: map[uint8][]byte{}}
}

// attach gives the kernel the Device's memory (the "user address space").
func (k *fakeKernel) attach(d *Device) {
	k.mu.Lock()
	k.mem, k.base = d.mem, d.base
	k.mu.Unlock()
}

func (k *fakeKernel) at(addr uintptr, n int) []byte {
	off := int(addr - k.base)
	if addr < k.base || off+n > len(k.mem) {
		panic(fmt.Sprintf("fake kernel: address %#x outside the device memory", addr))
	}
	return k.mem[off : off+n]
}

func (k *fakeKernel) read() ([]byte, error) { return k.desc, nil }

func (k *fakeKernel) wait(drain func() bool) error {
	for {
		if drain() {
			return nil
		}
		select {
		case <-k.kick:
		case <-k.done:
			return errors.New("file closed")
		}
	}
}

func (k *fakeKernel) wake() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

func (k *fakeKernel) close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.closed {
		k.closed = true
		k.pending = nil // usbdev_release kills them: never reaped
		close(k.done)
	}
	return nil
}

func (k *fakeKernel) call(format string, args ...any) {
	k.calls = append(k.calls, fmt.Sprintf(format, args...))
}

func (k *fakeKernel) ioctl(req, arg uintptr) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return 0, unix.EBADF
	}
	if e, ok := k.fail[req]; ok {
		delete(k.fail, req)
		return 0, e
	}
	switch req {
	case IoctlSubmitURB:
		return 0, k.submit(arg)
	case IoctlDiscardURB:
		for i, f := range k.pending {
			if f.user == arg {
				k.pending = append(k.pending[:i], k.pending[i+1:]...)
				f.status = -104 // ECONNRESET
				k.completed = append(k.completed, f)
				k.wake()
				return 0, nil
			}
		}
		return 0, unix.EINVAL
	case IoctlReapURBNDelay:
		if k.bogusReap != 0 {
			le.PutUint64(k.at(arg, 8), uint64(k.bogusReap))
			k.bogusReap = 0
			return 0, nil
		}
		if len(k.completed) == 0 {
			if k.gone {
				return 0, unix.ENODEV
			}
			return 0, unix.EAGAIN
		}
		f := k.completed[0]
		k.completed = k.completed[1:]
		k.writeBack(f)
		le.PutUint64(k.at(arg, 8), uint64(f.user))
		return 0, nil
	case IoctlDisconnectClaim:
		b := k.at(arg, disconnectClaimLen)
		name := string(b[8 : 8+5])
		k.call("disconnect-claim %d flags %d except %s", le.Uint32(b), le.Uint32(b[4:]), name)
	case IoctlReleaseInterface:
		k.call("release %d", le.Uint32(k.at(arg, 4)))
	case IoctlIoctl:
		b := k.at(arg, ioctlArgSize)
		code := "?"
		if uintptr(le.Uint32(b[4:])) == IoctlConnect {
			code = "connect"
		}
		k.call("ioctl %d %s", le.Uint32(b), code)
	case IoctlReset:
		k.call("reset")
	case IoctlSetConfiguration:
		k.call("set-configuration %d", int32(le.Uint32(k.at(arg, 4))))
	case IoctlSetInterface:
		b := k.at(arg, setInterfaceSize)
		k.call("set-interface %d %d", le.Uint32(b), le.Uint32(b[4:]))
	case IoctlClearHalt:
		k.call("clear-halt 0x%02x", le.Uint32(k.at(arg, 4)))
	default:
		return 0, unix.ENOTTY
	}
	return 0, nil
}

// submit checks the URB as proc_do_submiturb does, then runs it.
func (k *fakeKernel) submit(arg uintptr) error {
	if k.gone {
		return unix.ENODEV
	}
	var u URB
	u.Decode(k.at(arg, URBSize))
	f := &fakeURB{user: arg, u: u}
	in := u.Endpoint&0x80 != 0
	if u.Flags&^(URBShortNotOK|URBISOASAP) != 0 || (u.Flags&URBShortNotOK != 0 && !in) {
		return unix.EINVAL
	}
	if u.BufferLength < 0 || u.BufferLength > 65536+8 {
		return unix.EINVAL
	}
	buf := k.at(uintptr(u.Buffer), int(u.BufferLength))
	switch u.Type {
	case URBTypeControl:
		if u.BufferLength < 8 {
			return unix.EINVAL
		}
		f.setup = usbif.DecodeSetup((*[8]byte)(buf[:8]))
		in = f.setup.In()
		if int(f.setup.Length) != int(u.BufferLength)-8 {
			return unix.EINVAL
		}
		if !in {
			f.out = append([]byte(nil), buf[8:]...)
		}
	case URBTypeIso:
		if u.Packets < 1 || u.Packets > maxIsoPackets {
			return unix.EINVAL
		}
		total := 0
		for i := 0; i < int(u.Packets); i++ {
			p := DecodeIso(k.at(arg, URBSize+maxIsoPackets*IsoPacketDescSize), i)
			f.iso = append(f.iso, p)
			total += int(p.Length)
		}
		if total != int(u.BufferLength) {
			return unix.EINVAL
		}
		if !in {
			off := 0
			for _, p := range f.iso {
				k.isoOut = append(k.isoOut, append([]byte(nil), buf[off:off+int(p.Length)]...))
				off += int(p.Length)
			}
		}
	case URBTypeBulk, URBTypeInterrupt:
		if u.Endpoint&0x0f == 0x0f {
			return unix.ENOENT // no such endpoint
		}
		if !in {
			f.out = append([]byte(nil), buf...)
		}
	default:
		return unix.EINVAL
	}
	k.submits++
	k.run(f, in)
	return nil
}

// run is the scripted device.
func (k *fakeKernel) run(f *fakeURB, in bool) {
	u := f.u
	switch {
	case u.Type == URBTypeControl:
		if in && f.setup.Request == usbif.ReqGetDescriptor {
			f.inData = k.desc[:min(int(f.setup.Length), 18)]
		} else if in {
			f.inData = make([]byte, f.setup.Length)
		}
		f.actual = int32(len(f.inData))
		if !in {
			f.actual = int32(len(f.out))
		}
	case k.hold[u.Endpoint]:
		k.pending = append(k.pending, f)
		return
	case u.Type == URBTypeIso && in:
		f.started = 42
		for i, p := range f.iso {
			n := int(p.Length) - i%3
			f.iso[i].ActualLength = uint32(n)
			if i == 2 {
				f.iso[i].Status, f.iso[i].ActualLength = uint32(0xffffffee), 0 // -EXDEV
				f.errs++
				n = 0
			}
			for j := 0; j < n; j++ {
				f.inData = append(f.inData, byte(i*16+j))
			}
			f.inData = append(f.inData, make([]byte, int(p.Length)-n)...) // packed: each packet keeps its room
			f.actual += int32(n)
		}
	case u.Type == URBTypeIso:
		for i, p := range f.iso {
			f.iso[i].ActualLength = p.Length
			f.actual += int32(p.Length)
		}
	case in:
		n := int(u.BufferLength) - k.short
		if k.short > 0 && u.Flags&URBShortNotOK != 0 {
			f.status = -121 // EREMOTEIO
		}
		for i := 0; i < n; i++ {
			f.inData = append(f.inData, byte(i*3+int(u.Endpoint)))
		}
		f.actual = int32(n)
	default:
		k.outData[u.Endpoint] = append(k.outData[u.Endpoint], f.out...)
		f.actual = int32(len(f.out))
	}
	k.completed = append(k.completed, f)
	k.wake()
}

// release completes held URBs of an endpoint, newest first: completions
// on different endpoints may come in any order.
func (k *fakeKernel) release(ep uint8) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.hold, ep)
	var keep []*fakeURB
	var out []*fakeURB
	for _, f := range k.pending {
		if f.u.Endpoint == ep {
			out = append([]*fakeURB{f}, out...)
		} else {
			keep = append(keep, f)
		}
	}
	k.pending = keep
	for _, f := range out {
		k.run(f, ep&0x80 != 0)
	}
}

// unplug is the device leaving: pending URBs complete with -ESHUTDOWN,
// and once reaped, REAPURBNDELAY says ENODEV.
func (k *fakeKernel) unplug() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.gone = true
	for _, f := range k.pending {
		f.status = -108
		k.completed = append(k.completed, f)
	}
	k.pending = nil
	k.wake()
}

// writeBack is processcompl: results into the user URB, IN data into the
// user buffer.
func (k *fakeKernel) writeBack(f *fakeURB) {
	h := k.at(f.user, URBSize+maxIsoPackets*IsoPacketDescSize)
	le.PutUint32(h[offStatus:], uint32(f.status))
	le.PutUint32(h[offActualLength:], uint32(f.actual))
	le.PutUint32(h[offErrorCount:], uint32(f.errs))
	le.PutUint32(h[offStartFrame:], uint32(f.started))
	for i, p := range f.iso {
		EncodeIso(h, i, p)
	}
	if len(f.inData) > 0 {
		buf := k.at(uintptr(f.u.Buffer), int(f.u.BufferLength))
		if f.u.Type == URBTypeControl {
			buf = buf[8:]
		}
		copy(buf, f.inData)
	}
}

func (k *fakeKernel) callLog() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.calls...)
}

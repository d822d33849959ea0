// Package ehci is the virtual root hub of a pvusb frontend: ports 1..N
// with USB 2.0 hub port status and change bits (USB 2.0 §11.24.2.7),
// power, reset (10 ms) and suspend/resume (20 ms) timed by a clock tests
// control, connections and disconnections from conn-ring events, the hub
// descriptor and the status-change bitmap. It follows xen-hcd's root hub
// (usbif-protocol.md §8.1), one method per hub request, minus two of its
// bugs (§11 #21): resume completion clears the resuming state, and
// powering a port back on shows a device that is still attached.
//
// Nothing here reaches the backend: usbif carries no port messages
// (§8.1.4). Safe for concurrent use.
package ehci

import (
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/usbif"
)

// Port status bits (wPortStatus, USB 2.0 table 11-21) and change bits
// (wPortChange, table 11-22, here in the high half-word as xen-hcd keeps them).
const (
	PortConnection  = 0x0001
	PortEnable      = 0x0002
	PortSuspend     = 0x0004
	PortOverCurrent = 0x0008
	PortReset       = 0x0010
	PortPower       = 0x0100
	PortLowSpeed    = 0x0200
	PortHighSpeed   = 0x0400

	ChangeConnection  = 0x0001 << 16
	ChangeEnable      = 0x0002 << 16
	ChangeSuspend     = 0x0004 << 16
	ChangeOverCurrent = 0x0008 << 16
	ChangeReset       = 0x0010 << 16
	changeMask        = 0x001f << 16
)

// Feature selectors (USB 2.0 table 11-17).
const (
	FeatConnection    = 0
	FeatEnable        = 1
	FeatSuspend       = 2
	FeatOverCurrent   = 3
	FeatReset         = 4
	FeatPower         = 8
	FeatLowSpeed      = 9
	FeatCConnection   = 16
	FeatCEnable       = 17
	FeatCSuspend      = 18
	FeatCOverCurrent  = 19
	FeatCReset        = 20
	FeatTest          = 21
	FeatIndicator     = 22
	ResetTime         = 10 * time.Millisecond // xen-hcd's port reset
	ResumeTime        = 20 * time.Millisecond // xen-hcd's resume signalling
	hubDescriptorType = 0x29
)

// Hub requests: typeReq = bmRequestType<<8 | bRequest (USB 2.0 table 11-15).
const (
	ReqClearHubFeature  = 0x2001
	ReqClearPortFeature = 0x2301
	ReqGetHubDescriptor = 0xa006
	ReqGetHubStatus     = 0xa000
	ReqGetPortStatus    = 0xa300
	ReqSetHubFeature    = 0x2003
	ReqSetPortFeature   = 0x2303
)

// ErrStall is a request the hub refuses (the host sees -EPIPE).
var ErrStall = errors.New("ehci: stall")

// Clock is the hub's time: real in usbfront, stepped in tests.
type Clock interface{ Now() time.Time }

// RealClock is the system clock.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

type port struct {
	status   uint32      // wPortStatus | wPortChange<<16
	speed    usbif.Speed // of the device on the port; SpeedNone when empty
	resuming bool
	timeout  time.Time
}

// Hub is a root hub of N ports.
type Hub struct {
	n     int
	clock Clock

	mu    sync.Mutex
	ports [usbif.MaxPorts + 1]port
}

// New makes a hub of n ports (1..31), all unpowered and empty.
func New(n int, clock Clock) *Hub {
	if n < 1 || n > usbif.MaxPorts {
		panic("ehci: ports outside 1..31")
	}
	if clock == nil {
		clock = RealClock{}
	}
	return &Hub{n: n, clock: clock}
}

// Ports is N.
func (h *Hub) Ports() int { return h.n }

// Connect applies a conn-ring event (xenhcd_rhport_connect): a speed
// different from the port's is stored and, on a powered port, becomes a
// connection change; the port is never enabled here (the host must reset
// it). The same speed again changes nothing.
func (h *Hub) Connect(p uint8, speed usbif.Speed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p == 0 || int(p) > h.n || speed > usbif.SpeedHigh {
		return
	}
	pt := &h.ports[p]
	if pt.speed == speed {
		return
	}
	pt.speed = speed
	if pt.status&PortPower != 0 {
		pt.applyConnection()
	}
}

// applyConnection sets the connection bits from the stored speed and
// flags the change (xenhcd_set_connect_state).
func (pt *port) applyConnection() {
	pt.status &^= PortConnection | PortEnable | PortLowSpeed | PortHighSpeed | PortSuspend
	pt.resuming = false
	switch pt.speed {
	case usbif.SpeedLow:
		pt.status |= PortConnection | PortLowSpeed
	case usbif.SpeedFull:
		pt.status |= PortConnection
	case usbif.SpeedHigh:
		pt.status |= PortConnection | PortHighSpeed
	}
	pt.status |= ChangeConnection
}

// timersLocked completes a port's reset and resume when their time came.
func (h *Hub) timersLocked(p int) {
	pt := &h.ports[p]
	now := h.clock.Now()
	if pt.resuming && !now.Before(pt.timeout) {
		pt.resuming = false
		pt.status &^= PortSuspend
		pt.status |= ChangeSuspend
	}
	if pt.status&PortReset != 0 && !now.Before(pt.timeout) {
		pt.status &^= PortReset
		pt.status |= ChangeReset
		if pt.speed != usbif.SpeedNone {
			pt.status |= PortEnable
			switch pt.speed {
			case usbif.SpeedLow:
				pt.status |= PortLowSpeed
			case usbif.SpeedHigh:
				pt.status |= PortHighSpeed
			}
		}
	}
}

// StatusBitmap is the hub's status-change bitmap (the interrupt
// endpoint's data): bit p set when port p has any change bit; bit 0 (the
// hub) never.
func (h *Hub) StatusBitmap() []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := make([]byte, 1+h.n/8)
	for p := 1; p <= h.n; p++ {
		h.timersLocked(p)
		if h.ports[p].status&changeMask != 0 {
			b[p/8] |= 1 << (p % 8)
		}
	}
	return b
}

// Enabled reports whether port p is enabled (reset done, device there).
func (h *Hub) Enabled(p uint8) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p == 0 || int(p) > h.n {
		return false
	}
	h.timersLocked(int(p))
	return h.ports[p].status&PortEnable != 0
}

// Speed is the speed of the device on port p (SpeedNone when empty).
func (h *Hub) Speed(p uint8) usbif.Speed {
	h.mu.Lock()
	defer h.mu.Unlock()
	if p == 0 || int(p) > h.n {
		return usbif.SpeedNone
	}
	return h.ports[p].speed
}

// Control answers one hub request; it returns the bytes written to buf
// (IN requests) or ErrStall.
func (h *Hub) Control(s usbif.SetupPacket, buf []byte) (int, error) {
	typeReq := uint16(s.RequestType)<<8 | uint16(s.Request)
	switch typeReq {
	case ReqClearHubFeature:
		return 0, h.ClearHubFeature(s.Value)
	case ReqSetHubFeature:
		return 0, h.SetHubFeature(s.Value)
	case ReqGetHubStatus:
		return h.GetHubStatus(buf)
	case ReqGetHubDescriptor:
		return h.GetHubDescriptor(buf)
	case ReqGetPortStatus:
		return h.GetPortStatus(s.Index, buf)
	case ReqSetPortFeature:
		return 0, h.SetPortFeature(s.Value, s.Index)
	case ReqClearPortFeature:
		return 0, h.ClearPortFeature(s.Value, s.Index)
	}
	return 0, ErrStall
}

// ClearHubFeature (USB 2.0 §11.24.2.1): the root hub has no
// local-power or over-current state to clear; accepted.
func (h *Hub) ClearHubFeature(feature uint16) error { return nil }

// SetHubFeature (§11.24.2.12): nothing to set; stalls, as xen-hcd does.
func (h *Hub) SetHubFeature(feature uint16) error { return ErrStall }

// GetHubStatus (§11.24.2.6): local power good, no over-current: zeros.
func (h *Hub) GetHubStatus(buf []byte) (int, error) {
	if len(buf) < 4 {
		return 0, ErrStall
	}
	clear(buf[:4])
	return 4, nil
}

// GetHubDescriptor (§11.24.2.5, table 11-13): N ports, no power
// switching, per-port over-current, 20 ms power-on to power-good, no
// removable-device restrictions; truncated to the host's wLength.
func (h *Hub) GetHubDescriptor(buf []byte) (int, error) {
	nb := 1 + h.n/8
	d := make([]byte, 7+2*nb)
	d[0], d[1], d[2] = byte(len(d)), hubDescriptorType, byte(h.n)
	binary.LittleEndian.PutUint16(d[3:], 0x000a)
	d[5] = 10 // bPwrOn2PwrGood, 2 ms units
	for i := 0; i < nb; i++ {
		d[7+nb+i] = 0xff // PortPwrCtrlMask
	}
	return copy(buf, d), nil
}

// portIndex checks wIndex before it indexes anything.
func (h *Hub) portIndex(index uint16) (int, error) {
	if index == 0 || int(index) > h.n {
		return 0, ErrStall
	}
	return int(index), nil
}

// GetPortStatus (§11.24.2.7) completes due reset and resume timers, then
// returns wPortStatus and wPortChange.
func (h *Hub) GetPortStatus(index uint16, buf []byte) (int, error) {
	p, err := h.portIndex(index)
	if err != nil || len(buf) < 4 {
		return 0, ErrStall
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.timersLocked(p)
	binary.LittleEndian.PutUint32(buf, h.ports[p].status)
	return 4, nil
}

// SetPortFeature (§11.24.2.13): POWER (and a device still attached shows
// up), RESET (10 ms; enable and speed bits when done), SUSPEND; other
// features set their bit on a powered port.
func (h *Hub) SetPortFeature(feature, index uint16) error {
	p, err := h.portIndex(index)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	pt := &h.ports[p]
	switch feature {
	case FeatPower:
		if pt.status&PortPower == 0 {
			pt.status |= PortPower
			if pt.speed != usbif.SpeedNone {
				pt.applyConnection()
			}
		}
	case FeatReset:
		if pt.status&PortPower == 0 {
			return nil
		}
		pt.status &^= PortEnable | PortLowSpeed | PortHighSpeed | PortSuspend
		pt.resuming = false
		pt.status |= PortReset
		pt.timeout = h.clock.Now().Add(ResetTime)
	case FeatSuspend:
		if pt.status&PortEnable != 0 {
			pt.status |= PortSuspend
		}
	case FeatTest, FeatIndicator:
		// Test modes and indicators are not there: accepted, no effect.
	default:
		if feature > 31 {
			return ErrStall
		}
		if pt.status&PortPower != 0 {
			pt.status |= 1 << feature
		}
	}
	return nil
}

// ClearPortFeature (§11.24.2.2): SUSPEND starts a 20 ms resume, POWER
// drops everything but the attached device (which shows again when
// powered), ENABLE disables, the change selectors clear their bit.
func (h *Hub) ClearPortFeature(feature, index uint16) error {
	p, err := h.portIndex(index)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	pt := &h.ports[p]
	switch feature {
	case FeatSuspend:
		if pt.status&PortSuspend != 0 && !pt.resuming {
			pt.resuming = true
			pt.timeout = h.clock.Now().Add(ResumeTime)
		}
	case FeatPower:
		pt.status = 0
		pt.resuming = false
	case FeatEnable:
		pt.status &^= PortEnable | PortSuspend
		pt.resuming = false
	case FeatCConnection, FeatCEnable, FeatCSuspend, FeatCOverCurrent, FeatCReset:
		pt.status &^= 1 << feature
	case FeatIndicator:
	default:
		return ErrStall
	}
	return nil
}

// ResetPort does to port p what Linux's hub driver does to a new
// connection (hub_port_connect_change, hub_port_reset): acknowledge the
// connection change, reset the port, wait until the reset completes,
// acknowledge that. It reports whether the port came out enabled (a
// device is there) and its speed; sleep waits (the clock's time).
func (h *Hub) ResetPort(p uint8, sleep func(time.Duration) error) (bool, usbif.Speed, error) {
	if err := h.ClearPortFeature(FeatCConnection, uint16(p)); err != nil {
		return false, 0, err
	}
	if err := h.SetPortFeature(FeatReset, uint16(p)); err != nil {
		return false, 0, err
	}
	var st [4]byte
	for i := 0; i < 10; i++ {
		if err := sleep(ResetTime); err != nil {
			return false, 0, err
		}
		if _, err := h.GetPortStatus(uint16(p), st[:]); err != nil {
			return false, 0, err
		}
		if s := binary.LittleEndian.Uint32(st[:]); s&PortReset == 0 {
			_ = h.ClearPortFeature(FeatCReset, uint16(p))
			return s&PortEnable != 0, h.Speed(p), nil
		}
	}
	return false, 0, errors.New("ehci: port reset never completed")
}

// Package stub is the device seam of the backend: one USB device that a
// vusb port serves, a host device through usbfs or an emulated one. The
// backend hands it transfers and gets them back, completed, on a channel.
package stub

import (
	"errors"

	"github.com/pvusb/pvusb/core/usbif"
)

// Transfer is one URB as the device sees it. The backend owns it; a device
// may use it between Submit and sending it on Done, and never after.
type Transfer struct {
	Type       usbif.PipeType
	Endpoint   uint8             // bEndpointAddress: number, bit 7 = IN
	Setup      usbif.SetupPacket // control only
	Buffer     []byte            // OUT: the data; IN: room for it (len = requested)
	ShortNotOK bool              // a short IN completes with StatusRemoteIO
	Interval   int               // interrupt and isochronous: the guest's urb->interval

	// Packets are an isochronous transfer's packets, each a slice of
	// Buffer the device fills (IN) or sends (OUT) on its own; nil otherwise.
	Packets []IsoPacket

	// Set by the device before it sends the transfer on Done.
	Status     usbif.Status
	Actual     int
	StartFrame int // isochronous: the frame the transfer started in
	ErrorCount int // isochronous: packets that failed

	// Done receives the transfer exactly once when it completes (also
	// when cancelled). The backend sizes it so a send never blocks.
	Done chan<- *Transfer

	// Cookie is the backend's; devices leave it alone.
	Cookie any
}

// Complete sets the result and hands the transfer back.
func (t *Transfer) Complete(st usbif.Status, actual int) {
	t.Status, t.Actual = st, actual
	t.Done <- t
}

// IsoPacket is one packet of an isochronous transfer.
type IsoPacket struct {
	Offset, Length int          // its bytes in Transfer.Buffer
	Actual         int          // set by the device: bytes transferred
	Status         usbif.Status // set by the device
}

// Identity describes a device for rules and listings.
type Identity struct {
	VID, PID     uint16
	Class        uint8 // bDeviceClass
	Manufacturer string
	Product      string
	Serial       string
}

// IdentityOf reads VID, PID and class from a device descriptor.
func IdentityOf(desc []byte) Identity {
	if len(desc) < 12 {
		return Identity{}
	}
	return Identity{VID: uint16(desc[8]) | uint16(desc[9])<<8, PID: uint16(desc[10]) | uint16(desc[11])<<8, Class: desc[4]}
}

// Device is one USB device. Calls come from one goroutine at a time;
// completions may arrive from any goroutine, in any order.
type Device interface {
	// Descriptors are the raw device descriptor followed by the active
	// configuration descriptor set, as GET_DESCRIPTOR returns them.
	DeviceDescriptor() []byte
	// Identity is who the device says it is.
	Identity() Identity
	// Speed is the device's speed on the port (never SpeedNone).
	Speed() usbif.Speed
	// Submit starts a transfer; it completes through t.Done. An error
	// means it was not started (and will not be sent on Done).
	Submit(t *Transfer) error
	// Cancel asks for an in-flight transfer to end early; it still
	// completes through Done (usually StatusConnReset or StatusNoEnt).
	Cancel(t *Transfer)
	// Reset resets the device (a port reset as the device sees it).
	Reset() error
	// SetConfiguration, SetInterface and ClearHalt are the standard
	// requests the backend intercepts and performs through the host stack
	// (usbif-protocol.md §8.2.2).
	SetConfiguration(value uint8) error
	SetInterface(iface, alt uint8) error
	ClearHalt(endpoint uint8) error
	// Close releases the device; in-flight transfers complete first.
	Close() error
}

// Errors a device returns; StatusOf maps every error to a ring status.
var (
	ErrStall    = errors.New("stub: endpoint stalled")
	ErrNoDevice = errors.New("stub: device gone")
	ErrBusy     = errors.New("stub: too many transfers in flight")
	ErrInvalid  = errors.New("stub: invalid request")
)

// StatusOf maps a device error to the status the ring carries: the one
// place that decides it.
func StatusOf(err error) usbif.Status {
	switch {
	case err == nil:
		return usbif.StatusOK
	case errors.Is(err, ErrStall):
		return usbif.StatusStall
	case errors.Is(err, ErrNoDevice):
		return usbif.StatusNoDev
	case errors.Is(err, ErrInvalid):
		return usbif.StatusInval
	}
	return usbif.StatusShutdown
}

// StatusOfErrno maps the status Linux's USB core gives a finished URB
// (0 or a negative errno, Documentation/driver-api/usb/error-codes.rst)
// to the status the ring carries: the one place that decides it for
// host devices.
func StatusOfErrno(errno int32) usbif.Status {
	switch errno {
	case 0:
		return usbif.StatusOK
	case -32: // EPIPE: stall
		return usbif.StatusStall
	case -121: // EREMOTEIO: short IN under URB_SHORT_NOT_OK
		return usbif.StatusRemoteIO
	case -2: // ENOENT: unlinked (synchronously)
		return usbif.StatusNoEnt
	case -104: // ECONNRESET: unlinked (asynchronously)
		return usbif.StatusConnReset
	case -75: // EOVERFLOW: babble
		return usbif.StatusBabble
	case -71, -84, -62, -70, -63, -18:
		// EPROTO (bitstuff, no response), EILSEQ (CRC), ETIME (timeout),
		// ECOMM and ENOSR (host buffer over/underrun), EXDEV (iso packet
		// partially done): transmission errors.
		return usbif.StatusIOError
	case -19, -108: // ENODEV, ESHUTDOWN: the device or its controller went away
		return usbif.StatusNoDev
	}
	return usbif.StatusShutdown
}

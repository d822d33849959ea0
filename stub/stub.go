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

	// Set by the device before it sends the transfer on Done.
	Status usbif.Status
	Actual int

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

// Device is one USB device. Calls come from one goroutine at a time;
// completions may arrive from any goroutine, in any order.
type Device interface {
	// Descriptors are the raw device descriptor followed by the active
	// configuration descriptor set, as GET_DESCRIPTOR returns them.
	DeviceDescriptor() []byte
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

// Package null is a vendor-class device whose bulk endpoints do nothing
// but complete: IN transfers return as many bytes as asked (whatever the
// buffer holds), OUT transfers swallow theirs, like Linux's g_zero
// source/sink without the pattern. `pvusb bench` measures the transport
// with it: what remains is the ring, the grants and the events.
package null

import (
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/emu"
)

// Endpoints.
const (
	EndpointIn  = 0x81
	EndpointOut = 0x02
)

type sink struct{}

// New makes the device.
func New() stub.Device {
	d := emu.Descriptors{
		Device: emu.DeviceDesc(0xff, 0, 0, 0x1209, 0x0005, 0x0100),
		Config: emu.Config(1, 100,
			emu.Interface(0, 2, 0xff, 0, 0, 0),
			emu.Endpoint(EndpointIn, 0x02, 512, 0),
			emu.Endpoint(EndpointOut, 0x02, 512, 0)),
		Strings: map[uint8]string{1: "pvusb", 2: "pvusb null device", 3: "NULL0001"},
	}
	return emu.New(d, sink{}, usbif.SpeedHigh)
}

func (sink) Control(usbif.SetupPacket, []byte) (int, error) { return 0, stub.ErrStall }

// Submit completes every bulk transfer at once with its full length.
func (sink) Submit(t *stub.Transfer) error {
	if t.Type != usbif.TypeBulk || (t.Endpoint != EndpointIn && t.Endpoint != EndpointOut) {
		return stub.ErrStall
	}
	t.Complete(usbif.StatusOK, len(t.Buffer))
	return nil
}

func (sink) Cancel(*stub.Transfer) {}
func (sink) ClearHalt(uint8) error { return nil }
func (sink) Reset()                {}
func (sink) Close() error          { return nil }

// Package emu is the common part of pvusb's emulated USB devices: it
// answers the standard requests (USB 2.0 §9.4) from descriptor tables and
// hands class requests and data endpoints to the device's Function.
package emu

import (
	"encoding/binary"
	"sync"

	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// Function is the class-specific part of an emulated device.
type Function interface {
	// Control answers a class or vendor request; it returns the bytes
	// written to buf (IN) or consumed (OUT), or stub.ErrStall.
	Control(s usbif.SetupPacket, buf []byte) (int, error)
	// Submit runs a transfer on a data endpoint; it completes through t.Done.
	Submit(t *stub.Transfer) error
	// Cancel ends an in-flight data transfer early.
	Cancel(t *stub.Transfer)
	// ClearHalt clears a halted data endpoint.
	ClearHalt(ep uint8) error
	// Reset returns the function to its power-on state.
	Reset()
	Close() error
}

// Descriptors of an emulated device.
type Descriptors struct {
	Device  []byte           // 18-byte device descriptor
	Config  []byte           // configuration 1 with its interfaces and endpoints
	Strings map[uint8]string // string index -> text (English, US)
}

// Device is an emulated USB device: stub.Device over a Function.
type Device struct {
	d     Descriptors
	fn    Function
	speed usbif.Speed

	mu     sync.Mutex
	config uint8
	alt    [8]uint8
}

// New makes a device from its descriptors and function.
func New(d Descriptors, fn Function, speed usbif.Speed) *Device {
	return &Device{d: d, fn: fn, speed: speed}
}

// Function is the class-specific part, for the package that made it.
func (dv *Device) Function() Function { return dv.fn }

// DeviceDescriptor is the device descriptor.
func (dv *Device) DeviceDescriptor() []byte { return dv.d.Device }

// Identity is the device descriptor's identity with its strings.
func (dv *Device) Identity() stub.Identity {
	id := stub.IdentityOf(dv.d.Device)
	if len(dv.d.Device) >= 17 {
		id.Manufacturer, id.Product, id.Serial = dv.d.Strings[dv.d.Device[14]], dv.d.Strings[dv.d.Device[15]], dv.d.Strings[dv.d.Device[16]]
	}
	return id
}

// Speed is the device's speed.
func (dv *Device) Speed() usbif.Speed { return dv.speed }

// Submit answers control transfers here (standard ones) or through the
// function (class, vendor); data endpoints go to the function.
func (dv *Device) Submit(t *stub.Transfer) error {
	if t.Type != usbif.TypeCtrl {
		return dv.fn.Submit(t)
	}
	s := t.Setup
	var n int
	var err error
	if s.Standard() && !(s.Request == usbif.ReqGetDescriptor && s.Recipient() == usbif.RecipientInterface) {
		n, err = dv.standard(s, t.Buffer)
	} else {
		// Class and vendor requests, and class descriptors asked of an
		// interface (HID's report descriptor, HID 1.11 §7.1.1).
		n, err = dv.fn.Control(s, t.Buffer)
	}
	if err != nil {
		t.Complete(stub.StatusOf(err), 0)
		return nil
	}
	t.Complete(usbif.StatusOK, n)
	return nil
}

func (dv *Device) standard(s usbif.SetupPacket, buf []byte) (int, error) {
	switch s.Request {
	case usbif.ReqGetDescriptor:
		return dv.descriptor(s, buf)
	case usbif.ReqGetStatus:
		if len(buf) < 2 {
			return 0, stub.ErrStall
		}
		buf[0], buf[1] = 0, 0 // bus powered, no remote wakeup, endpoint not halted
		return 2, nil
	case usbif.ReqGetConfiguration:
		if len(buf) < 1 {
			return 0, stub.ErrStall
		}
		dv.mu.Lock()
		buf[0] = dv.config
		dv.mu.Unlock()
		return 1, nil
	case usbif.ReqGetInterface:
		if len(buf) < 1 || int(s.Index) >= len(dv.alt) {
			return 0, stub.ErrStall
		}
		dv.mu.Lock()
		buf[0] = dv.alt[s.Index]
		dv.mu.Unlock()
		return 1, nil
	case usbif.ReqSetConfiguration:
		return 0, dv.SetConfiguration(uint8(s.Value))
	case usbif.ReqSetInterface:
		return 0, dv.SetInterface(uint8(s.Index), uint8(s.Value))
	case usbif.ReqClearFeature:
		if s.Recipient() == usbif.RecipientEndpoint && s.Value == usbif.FeatureEndpointHalt {
			return 0, dv.ClearHalt(uint8(s.Index))
		}
		return 0, nil
	case usbif.ReqSetFeature:
		return 0, nil
	}
	return 0, stub.ErrStall
}

// descriptor answers GET_DESCRIPTOR, truncated to wLength.
func (dv *Device) descriptor(s usbif.SetupPacket, buf []byte) (int, error) {
	typ, idx := uint8(s.Value>>8), uint8(s.Value)
	var src []byte
	switch typ {
	case usbif.DescDevice:
		src = dv.d.Device
	case usbif.DescConfiguration:
		if idx != 0 {
			return 0, stub.ErrStall
		}
		src = dv.d.Config
	case usbif.DescString:
		if idx == 0 {
			src = []byte{4, usbif.DescString, 0x09, 0x04} // English (US)
			break
		}
		str, ok := dv.d.Strings[idx]
		if !ok {
			return 0, stub.ErrStall
		}
		return copy(buf, usbdesc.EncodeString(str)), nil
	case usbif.DescDeviceQualifier:
		if dv.speed != usbif.SpeedHigh {
			return 0, stub.ErrStall
		}
		q := []byte{10, usbif.DescDeviceQualifier, 0x00, 0x02, dv.d.Device[4], dv.d.Device[5], dv.d.Device[6], 64, 1, 0}
		return copy(buf, q), nil
	default:
		return 0, stub.ErrStall
	}
	return copy(buf, src), nil
}

// Cancel ends a data transfer early.
func (dv *Device) Cancel(t *stub.Transfer) { dv.fn.Cancel(t) }

// Reset returns the device to the default state: unconfigured.
func (dv *Device) Reset() error {
	dv.mu.Lock()
	dv.config = 0
	dv.alt = [8]uint8{}
	dv.mu.Unlock()
	dv.fn.Reset()
	return nil
}

// SetConfiguration accepts 0 (unconfigured) and 1, the only configuration.
func (dv *Device) SetConfiguration(v uint8) error {
	if v > 1 {
		return stub.ErrStall
	}
	dv.mu.Lock()
	dv.config = v
	dv.mu.Unlock()
	return nil
}

// SetInterface accepts alternate setting 0 of an existing interface.
func (dv *Device) SetInterface(iface, alt uint8) error {
	if int(iface) >= int(dv.d.Config[4]) || alt != 0 {
		return stub.ErrStall
	}
	dv.mu.Lock()
	dv.alt[iface] = alt
	dv.mu.Unlock()
	return nil
}

// ClearHalt clears a halted endpoint.
func (dv *Device) ClearHalt(ep uint8) error {
	if ep&0x0f == 0 {
		return nil
	}
	return dv.fn.ClearHalt(ep)
}

// Close releases the function.
func (dv *Device) Close() error { return dv.fn.Close() }

// Config builds a configuration descriptor set from interface and
// endpoint descriptors (already encoded), filling wTotalLength.
func Config(numInterfaces uint8, maxPowerMA int, parts ...[]byte) []byte {
	c := []byte{9, usbif.DescConfiguration, 0, 0, numInterfaces, 1, 0, 0x80, byte(maxPowerMA / 2)}
	for _, p := range parts {
		c = append(c, p...)
	}
	binary.LittleEndian.PutUint16(c[2:], uint16(len(c)))
	return c
}

// Interface encodes an interface descriptor.
func Interface(num, endpoints, class, subclass, protocol, iString uint8) []byte {
	return []byte{9, usbif.DescInterface, num, 0, endpoints, class, subclass, protocol, iString}
}

// Endpoint encodes an endpoint descriptor.
func Endpoint(addr, attributes uint8, maxPacket uint16, interval uint8) []byte {
	return []byte{7, usbif.DescEndpoint, addr, attributes, byte(maxPacket), byte(maxPacket >> 8), interval}
}

// DeviceDesc encodes a device descriptor (bcdUSB 2.0, 64-byte EP0, one configuration).
func DeviceDesc(class, subclass, protocol uint8, vid, pid, bcdDevice uint16) []byte {
	d := []byte{18, usbif.DescDevice, 0x00, 0x02, class, subclass, protocol, 64, 0, 0, 0, 0, 0, 0, 1, 2, 3, 1}
	binary.LittleEndian.PutUint16(d[8:], vid)
	binary.LittleEndian.PutUint16(d[10:], pid)
	binary.LittleEndian.PutUint16(d[12:], bcdDevice)
	return d
}

// Package usbdesc parses USB descriptors (USB 2.0 §9.6): the device
// descriptor and configuration descriptor sets with their interfaces and
// endpoints, as a device returns them to GET_DESCRIPTOR and as usbfs
// returns them when its device file is read (the device descriptor
// followed by every configuration's full set).
//
// The bytes come from devices and, in the frontend, from a backend: they
// are untrusted. Every length is checked against what is there; a short
// or malformed descriptor is an error, never a panic; descriptors the
// parser does not know (class-specific ones) are skipped by bLength.
package usbdesc

import (
	"errors"
	"fmt"
	"unicode/utf16"

	"github.com/pvusb/pvusb/core/usbif"
)

// Sizes of the standard descriptors.
const (
	DeviceSize    = 18
	ConfigSize    = 9
	InterfaceSize = 9
	EndpointSize  = 7
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("usbdesc: malformed descriptor")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Device is a device descriptor (USB 2.0 table 9-8).
type Device struct {
	USB          uint16 // bcdUSB
	Class        uint8
	SubClass     uint8
	Protocol     uint8
	MaxPacket0   uint8
	VID, PID     uint16
	BCDDevice    uint16
	Manufacturer uint8 // string indices
	Product      uint8
	Serial       uint8
	NumConfigs   uint8
}

// ParseDevice reads a device descriptor from the start of b.
func ParseDevice(b []byte) (Device, error) {
	if len(b) < DeviceSize || b[0] < DeviceSize || int(b[0]) > len(b) || b[1] != usbif.DescDevice {
		return Device{}, malformed("device descriptor: %d bytes, bLength %d, type %d", len(b), at(b, 0), at(b, 1))
	}
	return Device{
		USB: u16(b[2:]), Class: b[4], SubClass: b[5], Protocol: b[6], MaxPacket0: b[7],
		VID: u16(b[8:]), PID: u16(b[10:]), BCDDevice: u16(b[12:]),
		Manufacturer: b[14], Product: b[15], Serial: b[16], NumConfigs: b[17],
	}, nil
}

// Endpoint is an endpoint descriptor (USB 2.0 table 9-13).
type Endpoint struct {
	Address    uint8 // bEndpointAddress: number, bit 7 = IN
	Attributes uint8 // bits 0-1: transfer type
	MaxPacket  uint16
	Interval   uint8
}

// Transfer types of Endpoint.Attributes & 3.
const (
	XferControl   = 0
	XferIsoc      = 1
	XferBulk      = 2
	XferInterrupt = 3
)

// Type is the endpoint's transfer type (XferControl … XferInterrupt).
func (e Endpoint) Type() uint8 { return e.Attributes & 3 }

// In reports an IN endpoint.
func (e Endpoint) In() bool { return e.Address&0x80 != 0 }

// Interface is one alternate setting of an interface (USB 2.0 table 9-12).
type Interface struct {
	Number    uint8
	Alt       uint8
	Class     uint8
	SubClass  uint8
	Protocol  uint8
	Name      uint8 // iInterface
	Endpoints []Endpoint
}

// Config is a configuration with every alternate setting of every
// interface, in descriptor order.
type Config struct {
	Value       uint8 // bConfigurationValue
	NumIfaces   uint8 // bNumInterfaces
	Attributes  uint8
	MaxPower    uint8 // in 2 mA units
	TotalLength uint16
	Interfaces  []Interface
}

// InterfaceNumbers lists each interface number once, in first-seen order.
func (c *Config) InterfaceNumbers() []uint8 {
	var seen [256]bool
	var out []uint8
	for _, it := range c.Interfaces {
		if !seen[it.Number] {
			seen[it.Number] = true
			out = append(out, it.Number)
		}
	}
	return out
}

// Endpoint finds an endpoint by address in any alternate setting.
func (c *Config) Endpoint(addr uint8) (Endpoint, bool) {
	for _, it := range c.Interfaces {
		for _, e := range it.Endpoints {
			if e.Address == addr {
				return e, true
			}
		}
	}
	return Endpoint{}, false
}

// maxEndpoints bounds endpoints per alternate setting (15 IN + 15 OUT)
// and maxInterfaces the alternate settings per configuration, so hostile
// bytes cannot make the parser build huge tables from tiny descriptors.
const (
	maxEndpoints  = 30
	maxInterfaces = 256
)

// ParseConfig reads one configuration descriptor set from the start of
// b: the 9-byte header and wTotalLength bytes in all. It returns the
// configuration and the bytes it used.
func ParseConfig(b []byte) (Config, int, error) {
	if len(b) < ConfigSize || b[0] < ConfigSize || b[1] != usbif.DescConfiguration {
		return Config{}, 0, malformed("configuration descriptor: %d bytes, bLength %d, type %d", len(b), at(b, 0), at(b, 1))
	}
	c := Config{TotalLength: u16(b[2:]), NumIfaces: b[4], Value: b[5], Attributes: b[7], MaxPower: b[8]}
	total := int(c.TotalLength)
	if total < int(b[0]) || total > len(b) {
		return Config{}, 0, malformed("configuration %d: wTotalLength %d, %d bytes present", c.Value, total, len(b))
	}
	var cur *Interface
	for off := int(b[0]); off < total; {
		if total-off < 2 {
			return Config{}, 0, malformed("configuration %d: %d stray bytes at %d", c.Value, total-off, off)
		}
		l, typ := int(b[off]), b[off+1]
		if l < 2 || off+l > total {
			return Config{}, 0, malformed("configuration %d: descriptor at %d has bLength %d (%d bytes left)", c.Value, off, l, total-off)
		}
		d := b[off : off+l]
		switch typ {
		case usbif.DescInterface:
			if l < InterfaceSize {
				return Config{}, 0, malformed("interface descriptor at %d: bLength %d", off, l)
			}
			if len(c.Interfaces) == maxInterfaces {
				return Config{}, 0, malformed("configuration %d: more than %d interface descriptors", c.Value, maxInterfaces)
			}
			c.Interfaces = append(c.Interfaces, Interface{Number: d[2], Alt: d[3], Class: d[5], SubClass: d[6], Protocol: d[7], Name: d[8]})
			cur = &c.Interfaces[len(c.Interfaces)-1]
		case usbif.DescEndpoint:
			if l < EndpointSize {
				return Config{}, 0, malformed("endpoint descriptor at %d: bLength %d", off, l)
			}
			if cur == nil {
				return Config{}, 0, malformed("endpoint descriptor at %d before any interface", off)
			}
			if len(cur.Endpoints) == maxEndpoints {
				return Config{}, 0, malformed("interface %d alt %d: more than %d endpoints", cur.Number, cur.Alt, maxEndpoints)
			}
			cur.Endpoints = append(cur.Endpoints, Endpoint{Address: d[2], Attributes: d[3], MaxPacket: u16(d[4:]), Interval: d[6]})
		}
		off += l
	}
	return c, total, nil
}

// ParseAll reads what a usbfs device file returns: a device descriptor
// followed by its configurations' full sets. A set cut short ends the
// list with an error; the configurations before it are returned too.
func ParseAll(b []byte) (Device, []Config, error) {
	d, err := ParseDevice(b)
	if err != nil {
		return Device{}, nil, err
	}
	var cs []Config
	rest := b[b[0]:]
	for i := 0; i < int(d.NumConfigs) && len(rest) > 0; i++ {
		c, n, err := ParseConfig(rest)
		if err != nil {
			return d, cs, fmt.Errorf("configuration %d of %d: %w", i+1, d.NumConfigs, err)
		}
		cs = append(cs, c)
		rest = rest[n:]
	}
	return d, cs, nil
}

// ConfigBytes returns the raw set of configuration value from a usbfs
// descriptor dump (device descriptor + sets), or nil.
func ConfigBytes(b []byte, value uint8) []byte {
	if len(b) < DeviceSize || int(b[0]) > len(b) {
		return nil
	}
	rest := b[b[0]:]
	for len(rest) >= ConfigSize {
		c, n, err := ParseConfig(rest)
		if err != nil {
			return nil
		}
		if c.Value == value {
			return rest[:n]
		}
		rest = rest[n:]
	}
	return nil
}

// String decodes a string descriptor (UTF-16LE after a 2-byte header);
// characters outside the BMP that arrive as surrogate pairs are joined.
func String(b []byte) (string, error) {
	if len(b) < 2 || int(b[0]) > len(b) || b[0] < 2 || b[1] != usbif.DescString {
		return "", malformed("string descriptor: %d bytes, bLength %d, type %d", len(b), at(b, 0), at(b, 1))
	}
	n := (int(b[0]) - 2) / 2
	u := make([]uint16, n)
	for i := range u {
		u[i] = u16(b[2+2*i:])
	}
	return string(utf16.Decode(u)), nil
}

// EncodeString builds a string descriptor for s (at most 126 UTF-16
// units; longer strings are cut).
func EncodeString(s string) []byte {
	u := utf16.Encode([]rune(s))
	if len(u) > 126 {
		u = u[:126]
	}
	b := make([]byte, 2+2*len(u))
	b[0], b[1] = byte(len(b)), usbif.DescString
	for i, c := range u {
		b[2+2*i], b[3+2*i] = byte(c), byte(c>>8)
	}
	return b
}

func u16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }

func at(b []byte, i int) int {
	if i < len(b) {
		return int(b[i])
	}
	return -1
}

// Package usbip speaks USB/IP (Linux Documentation/usb/usbip_protocol.rst,
// uapi <linux/usbip.h>): the operations phase (device list, import) and
// the URB phase (CMD_SUBMIT, RET_SUBMIT, CMD_UNLINK, RET_UNLINK). pvusb's
// frontend uses it two ways: attached to the guest kernel's vhci-hcd
// through a socketpair, so the guest's own drivers bind, and as a server
// on TCP (`usbfront --export`) for standard USB/IP clients. Everything is
// big-endian; every length that comes off the wire is bounded before use.
package usbip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

var be = binary.BigEndian

// Version is the protocol version both sides send (1.1.1).
const Version = 0x0111

// Operation codes (usbip_network.h).
const (
	OpReqDevlist = 0x8005
	OpRepDevlist = 0x0005
	OpReqImport  = 0x8003
	OpRepImport  = 0x0003
)

// Operation statuses (ST_*).
const (
	StOK     = 0
	StNA     = 1
	StBusy   = 2
	StDevErr = 3
	StNoDev  = 4
	StError  = 5
)

// URB-phase commands.
const (
	CmdSubmit = 0x1
	CmdUnlink = 0x2
	RetSubmit = 0x3
	RetUnlink = 0x4
)

// Transfer flags (USBIP_URB_*, fixed in uapi).
const (
	URBShortNotOK  = 0x0001
	URBIsoASAP     = 0x0002
	URBNoDMAMap    = 0x0004
	URBZeroPacket  = 0x0040
	URBNoInterrupt = 0x0080
	URBFreeBuffer  = 0x0100
	URBDirIn       = 0x0200
)

// Sizes.
const (
	OpHeaderSize  = 8
	HeaderSize    = 48
	DeviceSize    = 312
	InterfaceSize = 4
	IsoDescSize   = 16
	BusidSize     = 32
	pathSize      = 256
	MaxTransfer   = 1 << 20 // bound on a transfer buffer we accept off the wire
	MaxIsoPackets = 1024
	noIsoPackets  = 0xffffffff
	DirOut, DirIn = 0, 1
)

// ErrProtocol is wrapped by every malformed-message error.
var ErrProtocol = errors.New("usbip: protocol error")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// OpHeader starts every operations-phase message.
type OpHeader struct {
	Version uint16
	Code    uint16
	Status  uint32
}

// Encode returns the 8 bytes.
func (h OpHeader) Encode() []byte {
	b := make([]byte, OpHeaderSize)
	be.PutUint16(b, h.Version)
	be.PutUint16(b[2:], h.Code)
	be.PutUint32(b[4:], h.Status)
	return b
}

// ReadOpHeader reads one.
func ReadOpHeader(r io.Reader) (OpHeader, error) {
	var b [OpHeaderSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return OpHeader{}, err
	}
	return OpHeader{Version: be.Uint16(b[:]), Code: be.Uint16(b[2:]), Status: be.Uint32(b[4:])}, nil
}

// Device is struct usbip_usb_device: what a device list and an import
// reply describe.
type Device struct {
	Path                      string // sysfs-style path, informational
	Busid                     string // what a client imports
	Busnum, Devnum            uint32
	Speed                     uint32 // enum usb_device_speed: 1 low, 2 full, 3 high
	VID, PID, BCDDevice       uint16
	Class, SubClass, Protocol uint8
	ConfigValue, NumConfigs   uint8
	Interfaces                []Interface // in a device list only
}

// Interface is struct usbip_usb_interface.
type Interface struct{ Class, SubClass, Protocol uint8 }

// DevID is busnum<<16 | devnum, as headers carry it.
func (d Device) DevID() uint32 { return d.Busnum<<16 | d.Devnum }

// Encode returns the 312 bytes (and, with interfaces, 4 more each).
func (d Device) Encode(withInterfaces bool) []byte {
	b := make([]byte, DeviceSize)
	copy(b[:pathSize-1], d.Path)
	copy(b[pathSize:pathSize+BusidSize-1], d.Busid)
	o := pathSize + BusidSize
	be.PutUint32(b[o:], d.Busnum)
	be.PutUint32(b[o+4:], d.Devnum)
	be.PutUint32(b[o+8:], d.Speed)
	be.PutUint16(b[o+12:], d.VID)
	be.PutUint16(b[o+14:], d.PID)
	be.PutUint16(b[o+16:], d.BCDDevice)
	b[o+18], b[o+19], b[o+20] = d.Class, d.SubClass, d.Protocol
	b[o+21], b[o+22], b[o+23] = d.ConfigValue, d.NumConfigs, uint8(len(d.Interfaces))
	if withInterfaces {
		for _, it := range d.Interfaces {
			b = append(b, it.Class, it.SubClass, it.Protocol, 0)
		}
	}
	return b
}

// DecodeDevice reads a usbip_usb_device from 312 bytes.
func DecodeDevice(b []byte) (Device, int, error) {
	if len(b) < DeviceSize {
		return Device{}, 0, protoErr("device record of %d bytes", len(b))
	}
	cstr := func(s []byte) string {
		for i, c := range s {
			if c == 0 {
				return string(s[:i])
			}
		}
		return string(s)
	}
	o := pathSize + BusidSize
	d := Device{
		Path: cstr(b[:pathSize]), Busid: cstr(b[pathSize:o]),
		Busnum: be.Uint32(b[o:]), Devnum: be.Uint32(b[o+4:]), Speed: be.Uint32(b[o+8:]),
		VID: be.Uint16(b[o+12:]), PID: be.Uint16(b[o+14:]), BCDDevice: be.Uint16(b[o+16:]),
		Class: b[o+18], SubClass: b[o+19], Protocol: b[o+20], ConfigValue: b[o+21], NumConfigs: b[o+22],
	}
	return d, int(b[o+23]), nil
}

// Header is the 48-byte URB-phase header: the basic part and the
// command-specific part, all fields of every command.
type Header struct {
	Command   uint32
	Seqnum    uint32
	DevID     uint32
	Direction uint32
	Endpoint  uint32

	// CMD_SUBMIT / RET_SUBMIT
	Flags      uint32 // CMD_SUBMIT transfer_flags
	Length     int32  // CMD_SUBMIT transfer_buffer_length; RET_SUBMIT actual_length
	StartFrame int32
	Packets    int32 // number_of_packets, -1 (0xffffffff) when not isochronous
	Interval   int32 // CMD_SUBMIT
	Setup      [8]byte
	Status     int32  // RET_SUBMIT, RET_UNLINK
	ErrorCount int32  // RET_SUBMIT
	UnlinkSeq  uint32 // CMD_UNLINK
}

// Encode writes h into b (48 bytes).
func (h *Header) Encode(b *[HeaderSize]byte) {
	clear(b[:])
	be.PutUint32(b[0:], h.Command)
	be.PutUint32(b[4:], h.Seqnum)
	be.PutUint32(b[8:], h.DevID)
	be.PutUint32(b[12:], h.Direction)
	be.PutUint32(b[16:], h.Endpoint)
	switch h.Command {
	case CmdSubmit:
		be.PutUint32(b[20:], h.Flags)
		be.PutUint32(b[24:], uint32(h.Length))
		be.PutUint32(b[28:], uint32(h.StartFrame))
		be.PutUint32(b[32:], uint32(h.Packets))
		be.PutUint32(b[36:], uint32(h.Interval))
		copy(b[40:48], h.Setup[:])
	case RetSubmit:
		be.PutUint32(b[20:], uint32(h.Status))
		be.PutUint32(b[24:], uint32(h.Length))
		be.PutUint32(b[28:], uint32(h.StartFrame))
		be.PutUint32(b[32:], uint32(h.Packets))
		be.PutUint32(b[36:], uint32(h.ErrorCount))
	case CmdUnlink:
		be.PutUint32(b[20:], h.UnlinkSeq)
	case RetUnlink:
		be.PutUint32(b[20:], uint32(h.Status))
	}
}

// Decode reads b into h; an unknown command is an error.
func (h *Header) Decode(b *[HeaderSize]byte) error {
	*h = Header{Command: be.Uint32(b[0:]), Seqnum: be.Uint32(b[4:]), DevID: be.Uint32(b[8:]),
		Direction: be.Uint32(b[12:]), Endpoint: be.Uint32(b[16:])}
	switch h.Command {
	case CmdSubmit:
		h.Flags = be.Uint32(b[20:])
		h.Length = int32(be.Uint32(b[24:]))
		h.StartFrame = int32(be.Uint32(b[28:]))
		h.Packets = int32(be.Uint32(b[32:]))
		h.Interval = int32(be.Uint32(b[36:]))
		copy(h.Setup[:], b[40:48])
	case RetSubmit:
		h.Status = int32(be.Uint32(b[20:]))
		h.Length = int32(be.Uint32(b[24:]))
		h.StartFrame = int32(be.Uint32(b[28:]))
		h.Packets = int32(be.Uint32(b[32:]))
		h.ErrorCount = int32(be.Uint32(b[36:]))
	case CmdUnlink:
		h.UnlinkSeq = be.Uint32(b[20:])
	case RetUnlink:
		h.Status = int32(be.Uint32(b[20:]))
	default:
		return protoErr("command %#x", h.Command)
	}
	return nil
}

// IsoDesc is struct usbip_iso_packet_descriptor.
type IsoDesc struct {
	Offset, Length, Actual uint32
	Status                 int32
}

// EncodeIso writes descriptors after a transfer.
func EncodeIso(b []byte, ds []IsoDesc) []byte {
	for _, d := range ds {
		var x [IsoDescSize]byte
		be.PutUint32(x[0:], d.Offset)
		be.PutUint32(x[4:], d.Length)
		be.PutUint32(x[8:], d.Actual)
		be.PutUint32(x[12:], uint32(d.Status))
		b = append(b, x[:]...)
	}
	return b
}

// DecodeIso reads n descriptors from b (n*16 bytes).
func DecodeIso(b []byte, n int) []IsoDesc {
	out := make([]IsoDesc, n)
	for i := range out {
		x := b[i*IsoDescSize:]
		out[i] = IsoDesc{be.Uint32(x), be.Uint32(x[4:]), be.Uint32(x[8:]), int32(be.Uint32(x[12:]))}
	}
	return out
}

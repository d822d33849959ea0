// Package usbfs is the host-device side of the stub seam: Linux's usbfs
// (/dev/bus/usb/BBB/DDD) driven directly through ioctls, because gousb
// cannot express what the ring carries (SHORT_NOT_OK, zero-length packets,
// isochronous packets, clear-halt, FIFO order of many URBs per endpoint;
// go-stack.md §1).
//
// This file is the ABI: ioctl numbers and the layouts of their arguments
// on 64-bit Linux (amd64, arm64), checked against <linux/usbdevice_fs.h>
// by abi_test.go. The URB engine on top of it is the next step of issue 5.
package usbfs

import "encoding/binary"

// _IOC directions (asm-generic/ioctl.h; x86 and arm use these values).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr { return dir<<30 | size<<16 | uintptr('U')<<8 | nr }

// Sizes of the argument structs (64-bit).
const (
	URBSize            = 56 // struct usbdevfs_urb, before iso_frame_desc[]
	IsoPacketDescSize  = 12 // struct usbdevfs_iso_packet_desc
	ctrlTransferSize   = 24 // struct usbdevfs_ctrltransfer
	setInterfaceSize   = 8  // struct usbdevfs_setinterface
	disconnectClaimLen = 264
	ioctlArgSize       = 16  // struct usbdevfs_ioctl
	maxDriverName      = 255 // USBDEVFS_MAXDRIVERNAME
)

// ioctl numbers.
var (
	IoctlControl          = ioc(iocRead|iocWrite, 0, ctrlTransferSize)
	IoctlSetInterface     = ioc(iocRead, 4, setInterfaceSize)
	IoctlSetConfiguration = ioc(iocRead, 5, 4)
	IoctlSubmitURB        = ioc(iocRead, 10, URBSize)
	IoctlDiscardURB       = ioc(iocNone, 11, 0)
	IoctlReapURBNDelay    = ioc(iocWrite, 13, 8)
	IoctlClaimInterface   = ioc(iocRead, 15, 4)
	IoctlReleaseInterface = ioc(iocRead, 16, 4)
	IoctlReset            = ioc(iocNone, 20, 0)
	IoctlClearHalt        = ioc(iocRead, 21, 4)
	IoctlGetCapabilities  = ioc(iocRead, 26, 4)
	IoctlDisconnectClaim  = ioc(iocRead, 27, disconnectClaimLen)
	IoctlGetSpeed         = ioc(iocNone, 31, 0)
	IoctlIoctl            = ioc(iocRead|iocWrite, 18, ioctlArgSize)
	// IoctlConnect is the ioctl_code that USBDEVFS_IOCTL passes to an
	// interface to let kernel drivers bind it again (no argument).
	IoctlConnect = ioc(iocNone, 23, 0)
)

// URB types and flags (USBDEVFS_URB_*).
const (
	URBTypeIso       = 0
	URBTypeInterrupt = 1
	URBTypeControl   = 2
	URBTypeBulk      = 3

	URBShortNotOK               = 0x01
	URBISOASAP                  = 0x02
	URBZeroPacket               = 0x40
	DisconnectClaimIfDriver     = 0x01
	DisconnectClaimExceptDriver = 0x02
	CapZeroPacket               = 0x01
	CapNoPacketSizeLim          = 0x04
	CapReapAfterDisconnect      = 0x10
)

// Offsets in struct usbdevfs_urb.
const (
	offType         = 0
	offEndpoint     = 1
	offStatus       = 4
	offFlags        = 8
	offBuffer       = 16
	offBufferLength = 24
	offActualLength = 28
	offStartFrame   = 32
	offNumPackets   = 36
	offErrorCount   = 40
	offSignr        = 44
	offUserContext  = 48
)

var le = binary.LittleEndian

// URB is the fields of a struct usbdevfs_urb the engine sets and reads.
type URB struct {
	Type         uint8
	Endpoint     uint8
	Status       int32
	Flags        uint32
	Buffer       uint64 // address of the data buffer (memory the kernel may keep until reaped)
	BufferLength int32
	ActualLength int32
	StartFrame   int32
	Packets      int32 // number_of_packets (iso)
	ErrorCount   int32
	UserContext  uint64 // ours: which transfer this is
}

// Encode writes u into b (at least URBSize bytes); signr is 0 (no signal).
func (u *URB) Encode(b []byte) {
	clear(b[:URBSize])
	b[offType], b[offEndpoint] = u.Type, u.Endpoint
	le.PutUint32(b[offStatus:], uint32(u.Status))
	le.PutUint32(b[offFlags:], u.Flags)
	le.PutUint64(b[offBuffer:], u.Buffer)
	le.PutUint32(b[offBufferLength:], uint32(u.BufferLength))
	le.PutUint32(b[offActualLength:], uint32(u.ActualLength))
	le.PutUint32(b[offStartFrame:], uint32(u.StartFrame))
	le.PutUint32(b[offNumPackets:], uint32(u.Packets))
	le.PutUint32(b[offErrorCount:], uint32(u.ErrorCount))
	le.PutUint64(b[offUserContext:], u.UserContext)
}

// Decode reads what the kernel wrote back into a reaped URB.
func (u *URB) Decode(b []byte) {
	u.Type, u.Endpoint = b[offType], b[offEndpoint]
	u.Status = int32(le.Uint32(b[offStatus:]))
	u.Flags = le.Uint32(b[offFlags:])
	u.Buffer = le.Uint64(b[offBuffer:])
	u.BufferLength = int32(le.Uint32(b[offBufferLength:]))
	u.ActualLength = int32(le.Uint32(b[offActualLength:]))
	u.StartFrame = int32(le.Uint32(b[offStartFrame:]))
	u.Packets = int32(le.Uint32(b[offNumPackets:]))
	u.ErrorCount = int32(le.Uint32(b[offErrorCount:]))
	u.UserContext = le.Uint64(b[offUserContext:])
}

// IsoPacket is one struct usbdevfs_iso_packet_desc.
type IsoPacket struct{ Length, ActualLength, Status uint32 }

// EncodeIso writes packet i after the URB header.
func EncodeIso(b []byte, i int, p IsoPacket) {
	o := URBSize + i*IsoPacketDescSize
	le.PutUint32(b[o:], p.Length)
	le.PutUint32(b[o+4:], p.ActualLength)
	le.PutUint32(b[o+8:], p.Status)
}

// DecodeIso reads packet i.
func DecodeIso(b []byte, i int) IsoPacket {
	o := URBSize + i*IsoPacketDescSize
	return IsoPacket{le.Uint32(b[o:]), le.Uint32(b[o+4:]), le.Uint32(b[o+8:])}
}

// SetInterfaceArg writes struct usbdevfs_setinterface into b.
func SetInterfaceArg(b []byte, iface, alt uint32) []byte {
	b = b[:setInterfaceSize]
	le.PutUint32(b, iface)
	le.PutUint32(b[4:], alt)
	return b
}

// DisconnectClaimArg writes struct usbdevfs_disconnect_claim into b: take
// interface from whatever kernel driver has it, except one named driver
// (usually "usbfs", so a second claim of ours does not kick ourselves).
func DisconnectClaimArg(b []byte, iface, flags uint32, driver string) []byte {
	b = b[:disconnectClaimLen]
	clear(b)
	le.PutUint32(b, iface)
	le.PutUint32(b[4:], flags)
	copy(b[8:8+maxDriverName], driver)
	return b
}

// IoctlArg writes struct usbdevfs_ioctl into b: a driver ioctl (code)
// for interface ifno, without a data pointer.
func IoctlArg(b []byte, ifno uint32, code uintptr) []byte {
	b = b[:ioctlArgSize]
	clear(b)
	le.PutUint32(b, ifno)
	le.PutUint32(b[4:], uint32(code))
	return b
}

// Package usbif is the Xen paravirtualized USB wire protocol: the URB and
// conn ring messages of xen/io/usbif.h as Go values, their byte-exact
// encoding, the pipe bit field, statuses, speeds, and the validation a
// backend applies to a request copied from a hostile frontend.
//
// Every layout here is checked against Debian's libxen-dev headers by
// layout_test.go. All multi-byte fields are little-endian.
package usbif

// Limits from xen/io/usbif.h.
const (
	// MaxSegments is USBIF_MAX_SEGMENTS_PER_REQUEST: data plus iso
	// frame-descriptor segments of one request.
	MaxSegments = 16
	// MaxPorts is USBIF_MAX_PORTNR: root-hub ports of one vusb.
	MaxPorts = 31
	// PageSize is USBIF_RING_SIZE and the Xen page a segment lives in.
	PageSize = 4096
	// MaxTransfer is the most data one request can describe: 16 full pages.
	MaxTransfer = MaxSegments * PageSize
)

// Message sizes (sizeof the C structs).
const (
	URBRequestSize   = 148 // struct usbif_urb_request
	URBResponseSize  = 16  // struct usbif_urb_response
	ConnRequestSize  = 2   // struct usbif_conn_request
	ConnResponseSize = 4   // struct usbif_conn_response
	SegmentSize      = 8   // struct usbif_request_segment
	IsoFrameDescSize = 16  // Linux struct usb_iso_packet_descriptor, granted in place by xen-hcd
)

// Ring sizes: (4096-64)/entry rounded down to a power of two.
const (
	URBRingSize  = 16  // USB_URB_RING_SIZE
	ConnRingSize = 512 // USB_CONN_RING_SIZE
)

// Transfer flags (struct usbif_urb_request.transfer_flags).
const (
	// ShortNotOK is USBIF_SHORT_NOT_OK: a short IN transfer is an error.
	// It is the only defined bit; backends ignore the others.
	ShortNotOK uint16 = 0x0001
)

// Status is the status field of a URB response: 0 or a negative Linux errno.
type Status int32

// Statuses named by xen/io/usbif.h (USBIF_STATUS_*).
const (
	StatusOK       Status = 0
	StatusNoDev    Status = -19  // ENODEV: unknown port or address
	StatusInval    Status = -22  // EINVAL: control to address 0 other than GET_DESCRIPTOR/SET_ADDRESS
	StatusStall    Status = -32  // EPIPE: endpoint stalled
	StatusIOError  Status = -71  // EPROTO: I/O error; QEMU's answer for a cancelled URB
	StatusBabble   Status = -75  // EOVERFLOW: device sent more than asked
	StatusShutdown Status = -108 // ESHUTDOWN: malformed request, grant failure, unsupported
)

// Statuses Linux peers also use though the header does not name them.
const (
	StatusNoEnt     Status = -2   // ENOENT: URB unlinked before it ran
	StatusConnReset Status = -104 // ECONNRESET: URB unlinked while running
	StatusRemoteIO  Status = -121 // EREMOTEIO: short IN with SHORT_NOT_OK
)

// String names the status as the header does ("OK", "STALL", …) or by errno.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "OK"
	case StatusNoDev:
		return "NODEV"
	case StatusInval:
		return "INVAL"
	case StatusStall:
		return "STALL"
	case StatusIOError:
		return "IOERROR"
	case StatusBabble:
		return "BABBLE"
	case StatusShutdown:
		return "SHUTDOWN"
	case StatusNoEnt:
		return "NOENT"
	case StatusConnReset:
		return "CONNRESET"
	case StatusRemoteIO:
		return "REMOTEIO"
	}
	return "errno" + itoa(int64(s))
}

// Known reports whether xen-hcd understands the status; xen-hcd turns any
// other value into -ESHUTDOWN (xenhcd_translate_status).
func (s Status) Known() bool {
	switch s {
	case StatusOK, StatusNoDev, StatusInval, StatusStall, StatusIOError, StatusBabble, StatusShutdown:
		return true
	}
	return false
}

// Speed is the speed of a device on the conn ring (usb_device_speed).
type Speed uint8

// Speeds (USBIF_SPEED_*). None means the port is empty.
const (
	SpeedNone Speed = 0
	SpeedLow  Speed = 1
	SpeedFull Speed = 2
	SpeedHigh Speed = 3
)

// Valid reports whether the speed may appear on the conn ring.
func (s Speed) Valid() bool { return s <= SpeedHigh }

// String names the speed.
func (s Speed) String() string {
	switch s {
	case SpeedNone:
		return "none"
	case SpeedLow:
		return "low"
	case SpeedFull:
		return "full"
	case SpeedHigh:
		return "high"
	}
	return "speed" + itoa(int64(s))
}

// SpecVersion is the usb-ver XenStore node (enum usb_spec_version).
type SpecVersion uint8

// USB spec versions; pvUSB peers accept only USB11 and USB20.
const (
	VersionUnknown SpecVersion = 0
	VersionUSB11   SpecVersion = 1
	VersionUSB20   SpecVersion = 2
	VersionUSB30   SpecVersion = 3 // defined by the header, supported by no peer
)

// itoa formats without fmt so String methods stay cheap and allocation-light.
func itoa(v int64) string {
	var b [20]byte
	i := len(b)
	neg := v < 0
	u := uint64(v)
	if neg {
		u = uint64(-v)
	}
	for {
		i--
		b[i] = byte('0' + u%10)
		u /= 10
		if u == 0 {
			break
		}
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

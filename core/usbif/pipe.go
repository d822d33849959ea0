package usbif

// Pipe is the pipe field of a URB request (xen/io/usbif.h "pipe" bit layout):
//
//	bits 0-4   root-hub port 1..31
//	bit  5     unlink request
//	bit  6     reserved
//	bit  7     direction, 1 = IN
//	bits 8-14  device address 0..127
//	bits 15-18 endpoint 0..15
//	bits 19-29 reserved
//	bits 30-31 transfer type
type Pipe uint32

// Pipe masks and shifts (USBIF_PIPE_*).
const (
	PipePortMask  = 0x0000001f
	PipeUnlink    = 0x00000020
	PipeDirIn     = 0x00000080
	PipeDevMask   = 0x0000007f
	PipeDevShift  = 8
	PipeEPMask    = 0x0000000f
	PipeEPShift   = 15
	PipeTypeMask  = 0x00000003
	PipeTypeShift = 30

	// PipeReservedMask covers bit 6 and bits 19-29, which the header says
	// must be zero. xen-hcd never sets them; backends ignore them (§10.2).
	PipeReservedMask = 0x00000040 | 0x3ff80000
)

// PipeType is the transfer type in pipe bits 30-31.
type PipeType uint8

// Transfer types (USBIF_PIPE_TYPE_*).
const (
	TypeIsoc PipeType = 0
	TypeIntr PipeType = 1
	TypeCtrl PipeType = 2
	TypeBulk PipeType = 3
)

// String gives the short name ringdump prints: isoc, intr, ctrl, bulk.
func (t PipeType) String() string {
	switch t & PipeTypeMask {
	case TypeIsoc:
		return "isoc"
	case TypeIntr:
		return "intr"
	case TypeCtrl:
		return "ctrl"
	}
	return "bulk"
}

// NewPipe builds a submit pipe. Out-of-range arguments are masked to their
// field width, as the C macros would.
func NewPipe(port, dev, ep uint8, in bool, t PipeType) Pipe {
	p := uint32(port)&PipePortMask |
		(uint32(dev)&PipeDevMask)<<PipeDevShift |
		(uint32(ep)&PipeEPMask)<<PipeEPShift |
		(uint32(t)&PipeTypeMask)<<PipeTypeShift
	if in {
		p |= PipeDirIn
	}
	return Pipe(p)
}

// Port is the root-hub port (usbif_pipeportnum).
func (p Pipe) Port() uint8 { return uint8(uint32(p) & PipePortMask) }

// Unlink reports an unlink request (usbif_pipeunlink).
func (p Pipe) Unlink() bool { return uint32(p)&PipeUnlink != 0 }

// In reports the IN direction (usbif_pipein).
func (p Pipe) In() bool { return uint32(p)&PipeDirIn != 0 }

// Device is the device address (usbif_pipedevice).
func (p Pipe) Device() uint8 { return uint8(uint32(p) >> PipeDevShift & PipeDevMask) }

// Endpoint is the endpoint number (usbif_pipeendpoint).
func (p Pipe) Endpoint() uint8 { return uint8(uint32(p) >> PipeEPShift & PipeEPMask) }

// Type is the transfer type (usbif_pipetype).
func (p Pipe) Type() PipeType { return PipeType(uint32(p) >> PipeTypeShift & PipeTypeMask) }

// Reserved returns the reserved bits that are set.
func (p Pipe) Reserved() uint32 { return uint32(p) & PipeReservedMask }

// WithUnlink returns the pipe with the unlink bit set (usbif_setunlink_pipe).
func (p Pipe) WithUnlink() Pipe { return p | PipeUnlink }

// WithPort returns the pipe with its port field replaced.
func (p Pipe) WithPort(port uint8) Pipe {
	return Pipe(uint32(p)&^PipePortMask | uint32(port)&PipePortMask)
}

// EndpointAddress is the USB bEndpointAddress the pipe addresses: the
// endpoint number with bit 7 set for IN.
func (p Pipe) EndpointAddress() uint8 {
	a := p.Endpoint()
	if p.In() {
		a |= 0x80
	}
	return a
}

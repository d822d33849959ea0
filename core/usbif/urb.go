package usbif

import "encoding/binary"

var le = binary.LittleEndian

// Offsets in struct usbif_urb_request (xen/io/usbif.h; checked by layout_test.go).
const (
	offReqID           = 0  // uint16_t id
	offReqNrBufferSegs = 2  // uint16_t nr_buffer_segs
	offReqPipe         = 4  // uint32_t pipe
	offReqFlags        = 8  // uint16_t transfer_flags
	offReqBufferLength = 10 // uint16_t buffer_length
	offReqU            = 12 // union u, 8 bytes
	offReqSeg          = 20 // struct usbif_request_segment seg[16]

	// Offsets inside the union, relative to the request.
	offIsoInterval        = 12 // u.isoc.interval, u.intr.interval
	offIsoStartFrame      = 14 // u.isoc.start_frame
	offIsoNumberOfPackets = 16 // u.isoc.number_of_packets
	offIsoNrFrameDescSegs = 18 // u.isoc.nr_frame_desc_segs
	offUnlinkID           = 12 // u.unlink.unlink_id

	// Offsets in struct usbif_request_segment.
	offSegGref   = 0 // grant_ref_t gref
	offSegOffset = 4 // uint16_t offset
	offSegLength = 6 // uint16_t length
)

// Offsets in struct usbif_urb_response.
const (
	offRspID           = 0  // uint16_t id
	offRspStartFrame   = 2  // uint16_t start_frame
	offRspStatus       = 4  // int32_t status
	offRspActualLength = 8  // int32_t actual_length
	offRspErrorCount   = 12 // int32_t error_count
)

// Offsets in struct usbif_conn_response.
const (
	offConnID      = 0 // uint16_t id
	offConnPortnum = 2 // uint8_t portnum
	offConnSpeed   = 3 // uint8_t speed
)

// Segment is struct usbif_request_segment: one granted page and the bytes
// of it that carry data.
type Segment struct {
	Gref   uint32 // grant reference of a page of the frontend
	Offset uint16 // first byte of data in the page
	Length uint16 // bytes of data in the page
}

// End is Offset+Length computed without overflow.
func (s Segment) End() uint32 { return uint32(s.Offset) + uint32(s.Length) }

// URBRequest is struct usbif_urb_request, decoded. The union u is kept raw
// because which member is meaningful depends on the pipe; the accessors
// below interpret it. Fields that are not meaningful for a request's type
// may hold stale bytes (xen-hcd reuses its shadow entries) and must be ignored.
type URBRequest struct {
	ID            uint16
	NrBufferSegs  uint16
	Pipe          Pipe
	TransferFlags uint16
	BufferLength  uint16 // total length mod 65536: xen-hcd truncates 64 KiB to 0
	U             [8]byte
	Seg           [MaxSegments]Segment
}

// Decode fills r from the 148 wire bytes. It never fails: every bit
// pattern is a request; Validate says whether it is an acceptable one.
func (r *URBRequest) Decode(b *[URBRequestSize]byte) {
	r.ID = le.Uint16(b[offReqID:])
	r.NrBufferSegs = le.Uint16(b[offReqNrBufferSegs:])
	r.Pipe = Pipe(le.Uint32(b[offReqPipe:]))
	r.TransferFlags = le.Uint16(b[offReqFlags:])
	r.BufferLength = le.Uint16(b[offReqBufferLength:])
	copy(r.U[:], b[offReqU:offReqSeg])
	for i := range r.Seg {
		s := b[offReqSeg+i*SegmentSize:]
		r.Seg[i] = Segment{
			Gref:   le.Uint32(s[offSegGref:]),
			Offset: le.Uint16(s[offSegOffset:]),
			Length: le.Uint16(s[offSegLength:]),
		}
	}
}

// Encode writes all 148 bytes of r into b.
func (r *URBRequest) Encode(b *[URBRequestSize]byte) {
	le.PutUint16(b[offReqID:], r.ID)
	le.PutUint16(b[offReqNrBufferSegs:], r.NrBufferSegs)
	le.PutUint32(b[offReqPipe:], uint32(r.Pipe))
	le.PutUint16(b[offReqFlags:], r.TransferFlags)
	le.PutUint16(b[offReqBufferLength:], r.BufferLength)
	copy(b[offReqU:offReqSeg], r.U[:])
	for i, sg := range r.Seg {
		s := b[offReqSeg+i*SegmentSize:]
		le.PutUint32(s[offSegGref:], sg.Gref)
		le.PutUint16(s[offSegOffset:], sg.Offset)
		le.PutUint16(s[offSegLength:], sg.Length)
	}
}

func (r *URBRequest) u16(off int) uint16 { return le.Uint16(r.U[off-offReqU:]) }

func (r *URBRequest) setU16(off int, v uint16) { le.PutUint16(r.U[off-offReqU:], v) }

// Setup is the SETUP packet of a control request (u.ctrl).
func (r *URBRequest) Setup() SetupPacket { return DecodeSetup(&r.U) }

// SetSetup stores a SETUP packet in u.ctrl.
func (r *URBRequest) SetSetup(s SetupPacket) { s.Encode(&r.U) }

// Interval is u.isoc.interval or u.intr.interval.
func (r *URBRequest) Interval() uint16 { return r.u16(offIsoInterval) }

// StartFrame is u.isoc.start_frame.
func (r *URBRequest) StartFrame() uint16 { return r.u16(offIsoStartFrame) }

// NumberOfPackets is u.isoc.number_of_packets.
func (r *URBRequest) NumberOfPackets() uint16 { return r.u16(offIsoNumberOfPackets) }

// NrFrameDescSegs is u.isoc.nr_frame_desc_segs: iso descriptor segments
// that follow the data segments. Meaningless for other types.
func (r *URBRequest) NrFrameDescSegs() uint16 { return r.u16(offIsoNrFrameDescSegs) }

// UnlinkID is u.unlink.unlink_id: the id of the request to cancel.
func (r *URBRequest) UnlinkID() uint16 { return r.u16(offUnlinkID) }

// SetIsoc fills u.isoc.
func (r *URBRequest) SetIsoc(interval, startFrame, packets, descSegs uint16) {
	r.setU16(offIsoInterval, interval)
	r.setU16(offIsoStartFrame, startFrame)
	r.setU16(offIsoNumberOfPackets, packets)
	r.setU16(offIsoNrFrameDescSegs, descSegs)
}

// SetInterval fills u.intr.interval (pad bytes untouched).
func (r *URBRequest) SetInterval(interval uint16) { r.setU16(offIsoInterval, interval) }

// SetUnlinkID fills u.unlink.unlink_id (pad bytes untouched).
func (r *URBRequest) SetUnlinkID(id uint16) { r.setU16(offUnlinkID, id) }

// UsedSegments is how many seg[] entries the request uses, before any
// bound is applied: nr_buffer_segs, plus nr_frame_desc_segs for
// isochronous submits. Unlinks use none. Computed in int, so no u16 overflow.
func (r *URBRequest) UsedSegments() int {
	if r.Pipe.Unlink() {
		return 0
	}
	n := int(r.NrBufferSegs)
	if r.Pipe.Type() == TypeIsoc {
		n += int(r.NrFrameDescSegs())
	}
	return n
}

// DataLength is the sum of the data segment lengths, the real transfer
// size (buffer_length is only that mod 65536). Callers validate first;
// the count is clamped to MaxSegments so an unvalidated request cannot
// index out of range.
func (r *URBRequest) DataLength() int {
	n := int(r.NrBufferSegs)
	if n > MaxSegments {
		n = MaxSegments
	}
	total := 0
	for i := 0; i < n; i++ {
		total += int(r.Seg[i].Length)
	}
	return total
}

// URBResponse is struct usbif_urb_response.
type URBResponse struct {
	ID           uint16
	StartFrame   uint16 // isochronous only
	Status       Status
	ActualLength int32
	ErrorCount   int32 // isochronous only: failed packets
}

// Decode fills r from the 16 wire bytes.
func (r *URBResponse) Decode(b *[URBResponseSize]byte) {
	r.ID = le.Uint16(b[offRspID:])
	r.StartFrame = le.Uint16(b[offRspStartFrame:])
	r.Status = Status(int32(le.Uint32(b[offRspStatus:])))
	r.ActualLength = int32(le.Uint32(b[offRspActualLength:]))
	r.ErrorCount = int32(le.Uint32(b[offRspErrorCount:]))
}

// Encode writes r into b.
func (r *URBResponse) Encode(b *[URBResponseSize]byte) {
	le.PutUint16(b[offRspID:], r.ID)
	le.PutUint16(b[offRspStartFrame:], r.StartFrame)
	le.PutUint32(b[offRspStatus:], uint32(r.Status))
	le.PutUint32(b[offRspActualLength:], uint32(r.ActualLength))
	le.PutUint32(b[offRspErrorCount:], uint32(r.ErrorCount))
}

// ConnRequest is struct usbif_conn_request: a credit the frontend posts so
// the backend can report one hot-plug event. The id is arbitrary and echoed.
type ConnRequest struct {
	ID uint16
}

// Decode fills r from the 2 wire bytes.
func (r *ConnRequest) Decode(b *[ConnRequestSize]byte) { r.ID = le.Uint16(b[:]) }

// Encode writes r into b.
func (r *ConnRequest) Encode(b *[ConnRequestSize]byte) { le.PutUint16(b[:], r.ID) }

// ConnResponse is struct usbif_conn_response: port Port now holds a device
// of Speed (SpeedNone = disconnected).
type ConnResponse struct {
	ID    uint16
	Port  uint8
	Speed Speed
}

// Decode fills r from the 4 wire bytes.
func (r *ConnResponse) Decode(b *[ConnResponseSize]byte) {
	r.ID = le.Uint16(b[offConnID:])
	r.Port = b[offConnPortnum]
	r.Speed = Speed(b[offConnSpeed])
}

// Encode writes r into b.
func (r *ConnResponse) Encode(b *[ConnResponseSize]byte) {
	le.PutUint16(b[offConnID:], r.ID)
	b[offConnPortnum] = r.Port
	b[offConnSpeed] = uint8(r.Speed)
}

// IsoFrameDesc is one Linux struct usb_iso_packet_descriptor as xen-hcd
// grants them in place for isochronous requests: the backend reads Offset
// and Length and writes ActualLength and Status.
type IsoFrameDesc struct {
	Offset       uint32
	Length       uint32
	ActualLength uint32
	Status       int32
}

// Decode fills d from 16 bytes.
func (d *IsoFrameDesc) Decode(b *[IsoFrameDescSize]byte) {
	d.Offset = le.Uint32(b[0:])
	d.Length = le.Uint32(b[4:])
	d.ActualLength = le.Uint32(b[8:])
	d.Status = int32(le.Uint32(b[12:]))
}

// Encode writes d into b.
func (d *IsoFrameDesc) Encode(b *[IsoFrameDescSize]byte) {
	le.PutUint32(b[0:], d.Offset)
	le.PutUint32(b[4:], d.Length)
	le.PutUint32(b[8:], d.ActualLength)
	le.PutUint32(b[12:], uint32(d.Status))
}

// Package ringview explains a usbif ring page: the header indices and
// what they mean, every request and response still in the page, and
// every anomaly. It works on a private copy of the page, so a live ring
// cannot change under it; ringdump prints what it finds.
package ringview

import (
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
)

// Kind is which usbif ring a page holds.
type Kind string

// The two usbif rings.
const (
	KindURB  Kind = "urb"
	KindConn Kind = "conn"
)

// Layout is the slot layout of the kind's ring.
func (k Kind) Layout() ring.Layout {
	if k == KindConn {
		return ring.NewLayout(usbif.ConnResponseSize)
	}
	return ring.NewLayout(usbif.URBRequestSize)
}

// Dump is the explained page. Its JSON form is what `ringdump --json` prints.
type Dump struct {
	Kind      Kind       `json:"kind"`
	ReqProd   uint32     `json:"req_prod"`
	ReqEvent  uint32     `json:"req_event"`
	RspProd   uint32     `json:"rsp_prod"`
	RspEvent  uint32     `json:"rsp_event"`
	Size      uint32     `json:"size"`
	Requests  []Request  `json:"requests"`
	Responses []Response `json:"responses"`
	Anomalies []string   `json:"anomalies"`
	// Outstanding is req_prod - rsp_prod: requests posted and not yet answered.
	Outstanding uint32 `json:"outstanding"`
}

// Request is one request still waiting for its response. For a conn ring
// only Slot, Index and ID are meaningful and only they are printed.
type Request struct {
	Slot          uint32    `json:"slot"`
	Index         uint32    `json:"index"`
	ID            uint16    `json:"id"`
	Port          *uint8    `json:"port,omitempty"`
	Devnum        *uint8    `json:"devnum,omitempty"`
	Endpoint      *uint8    `json:"endpoint,omitempty"`
	Type          string    `json:"type,omitempty"`
	In            *bool     `json:"in,omitempty"`
	Unlink        *bool     `json:"unlink,omitempty"`
	UnlinkID      *uint16   `json:"unlink_id,omitempty"`
	TransferFlags *uint16   `json:"transfer_flags,omitempty"`
	BufferLength  *uint16   `json:"buffer_length,omitempty"`
	NrBufferSegs  *uint16   `json:"nr_buffer_segs,omitempty"`
	Setup         string    `json:"setup,omitempty"`
	SetupText     string    `json:"setup_text,omitempty"`
	Isoc          *Isoc     `json:"isoc,omitempty"`
	Segs          []Segment `json:"segs,omitempty"`
	Anomalies     []string  `json:"anomalies,omitempty"`
	// Taken: the back had consumed it when it last armed req_event.
	Taken bool `json:"taken"`
	// EarlierEvent (conn ring): the hot-plug event this slot carried
	// before the front re-posted it. A conn request is 2 bytes and the
	// response 4, and xen-hcd writes only the id, so the port and speed
	// bytes of the answered event survive the re-posted credit.
	EarlierEvent *ConnEvent `json:"earlier_event,omitempty"`
}

// ConnEvent is a hot-plug event: a port and the speed now on it.
type ConnEvent struct {
	Index     uint32 `json:"index"` // the response's ring index
	Portnum   uint8  `json:"portnum"`
	Speed     uint8  `json:"speed"`
	SpeedName string `json:"speed_name"`
}

// Isoc is the isochronous part of a request.
type Isoc struct {
	Interval        uint16 `json:"interval"`
	StartFrame      uint16 `json:"start_frame"`
	NumberOfPackets uint16 `json:"number_of_packets"`
	NrFrameDescSegs uint16 `json:"nr_frame_desc_segs"`
}

// Segment is one used seg[] entry.
type Segment struct {
	Gref   uint32 `json:"gref"`
	Offset uint16 `json:"offset"`
	Length uint16 `json:"length"`
}

// Response is one response still in the page. For a conn ring Portnum and
// Speed are set instead of the URB fields.
type Response struct {
	Slot         uint32   `json:"slot"`
	Index        uint32   `json:"index"`
	ID           uint16   `json:"id"`
	StartFrame   *uint16  `json:"start_frame,omitempty"`
	Status       *int32   `json:"status,omitempty"`
	StatusName   string   `json:"status_name,omitempty"`
	ActualLength *int32   `json:"actual_length,omitempty"`
	ErrorCount   *int32   `json:"error_count,omitempty"`
	Portnum      *uint8   `json:"portnum,omitempty"`
	Speed        *uint8   `json:"speed,omitempty"`
	SpeedName    string   `json:"speed_name,omitempty"`
	Anomalies    []string `json:"anomalies,omitempty"`
	// Consumed: the front had consumed it when it last armed rsp_event.
	Consumed bool `json:"consumed"`
}

// ErrPageSize is returned for input that is not exactly one ring page.
var ErrPageSize = errors.New("a ring page is exactly 4096 bytes")

// Guess names the kind a page most likely holds, and why: more than 16
// outstanding requests only fit a conn ring; bytes between the last conn
// slot (2112) and the last urb slot (2432) are only written on an urb ring.
func Guess(page []byte) (Kind, string) {
	h := ring.ReadHeader(page)
	if out := h.ReqProd - h.RspProd; out > usbif.URBRingSize && out <= usbif.ConnRingSize {
		return KindConn, fmt.Sprintf("%d outstanding requests fit only a conn ring", out)
	}
	conn, urb := KindConn.Layout(), KindURB.Layout()
	for _, b := range page[conn.End():urb.End()] {
		if b != 0 {
			return KindURB, "bytes beyond the conn ring's last slot are in use"
		}
	}
	return KindURB, "no sign of a conn ring; pass --kind conn if it is one"
}

// Analyze explains a page. numPorts (1..31) is the vusb's num-ports, used
// to flag unknown ports. The page is copied first.
func Analyze(page []byte, kind Kind, numPorts int) (*Dump, error) {
	if len(page) != ring.PageSize {
		return nil, fmt.Errorf("%w, got %d", ErrPageSize, len(page))
	}
	if kind != KindURB && kind != KindConn {
		return nil, fmt.Errorf("unknown ring kind %q (want urb or conn)", kind)
	}
	if numPorts < 1 || numPorts > usbif.MaxPorts {
		return nil, fmt.Errorf("num-ports %d outside 1..%d", numPorts, usbif.MaxPorts)
	}
	var snap [ring.PageSize]byte
	copy(snap[:], page) // one copy: a live page cannot change under the analysis
	p := snap[:]
	h := ring.ReadHeader(p)
	l := kind.Layout()
	d := &Dump{Kind: kind, ReqProd: h.ReqProd, ReqEvent: h.ReqEvent, RspProd: h.RspProd, RspEvent: h.RspEvent,
		Size: l.Size, Requests: []Request{}, Responses: []Response{}, Anomalies: []string{}}
	d.Outstanding = h.ReqProd - h.RspProd
	live := d.Outstanding
	overflow := live > l.Size
	switch {
	case live > l.Size && live > 1<<31:
		d.Anomalies = append(d.Anomalies, fmt.Sprintf("producer-overflow: rsp_prod %d is ahead of req_prod %d: responses to requests never made", h.RspProd, h.ReqProd))
		live = 0
	case live > l.Size:
		d.Anomalies = append(d.Anomalies, fmt.Sprintf("producer-overflow: req_prod - rsp_prod = %d > ring size %d", live, l.Size))
		live = l.Size
	}
	if ev := h.ReqEvent - h.RspProd; ev > l.Size+1 && h.ReqEvent-h.ReqProd > 1 {
		d.Anomalies = append(d.Anomalies, fmt.Sprintf("event-out-of-window: req_event %d is not within the ring's live indices", h.ReqEvent))
	}
	if ev := h.RspProd + 1 - h.RspEvent; ev > l.Size+1 && h.RspEvent-h.RspProd > 1 {
		d.Anomalies = append(d.Anomalies, fmt.Sprintf("event-out-of-window: rsp_event %d is not within the ring's recent responses", h.RspEvent))
	}
	for i := ring.OffPvt; i < ring.HeaderSize; i++ {
		if p[i] != 0 {
			d.Anomalies = append(d.Anomalies, fmt.Sprintf("header-padding: byte %d of pvt/__pad is 0x%02x, SHARED_RING_INIT zeroes them", i, p[i]))
			break
		}
	}
	// Requests: indices [rsp_prod, rsp_prod+live). Taken by the back if
	// below req_event-1, its req_cons when it last slept.
	takenUpTo := h.ReqEvent - 1 - h.RspProd
	if takenUpTo > live {
		takenUpTo = 0 // req_event stale or bogus: nothing is known to be taken
	}
	ids := map[uint16]uint32{}
	for i := uint32(0); i < live; i++ {
		idx := h.RspProd + i
		r := Request{Slot: l.Slot(idx), Index: idx, Taken: i < takenUpTo}
		off := l.SlotOffset(idx)
		if overflow && allZero(p[off:off+l.EntrySize]) {
			continue // the indices are bogus: show only slots that hold something
		}
		if kind == KindConn {
			var c usbif.ConnRequest
			c.Decode((*[usbif.ConnRequestSize]byte)(p[off:]))
			r.ID = c.ID
			// The response at idx-size was produced (and read, since the
			// front re-posted over it) if it lies in the last size
			// responses since index 0.
			if prev := idx - l.Size; h.RspProd-prev >= 1 && h.RspProd-prev <= l.Size && h.RspProd-prev <= h.RspProd {
				if port, speed := p[off+2], p[off+3]; port != 0 || speed != 0 {
					r.EarlierEvent = &ConnEvent{Index: prev, Portnum: port, Speed: speed, SpeedName: usbif.Speed(speed).String()}
				}
			}
		} else {
			decodeURBRequest(&r, (*[usbif.URBRequestSize]byte)(p[off:]), numPorts)
			if prev, dup := ids[r.ID]; dup {
				r.Anomalies = append(r.Anomalies, fmt.Sprintf("duplicate-id: id %d is also in flight at index %d", r.ID, prev))
			}
			ids[r.ID] = idx
		}
		d.Requests = append(d.Requests, r)
	}
	// Responses: the slots not overwritten by outstanding requests, newest
	// last; never more than were ever produced from index 0.
	keep := l.Size - live
	if h.RspProd-h.ReqProd < 1<<31 && h.RspProd != h.ReqProd {
		keep = 0 // rsp_prod ahead of req_prod: the slots hold nothing trustworthy
	}
	rspSize := usbif.URBResponseSize
	if kind == KindConn {
		rspSize = usbif.ConnResponseSize
	}
	for i := keep; i > 0; i-- {
		idx := h.RspProd - i
		r := Response{Slot: l.Slot(idx), Index: idx, Consumed: h.RspProd-idx > h.RspProd-(h.RspEvent-1)}
		off := l.SlotOffset(idx)
		if idx > h.RspProd && allZero(p[off:off+rspSize]) {
			// Below index 0 of a ring started at 0, a zero slot was never
			// written; after a real wrap it would hold a response.
			continue
		}
		if kind == KindConn {
			decodeConnResponse(&r, (*[usbif.ConnResponseSize]byte)(p[off:]), numPorts)
		} else {
			decodeURBResponse(&r, (*[usbif.URBResponseSize]byte)(p[off:]))
		}
		d.Responses = append(d.Responses, r)
	}
	return d, nil
}

func decodeURBRequest(r *Request, b *[usbif.URBRequestSize]byte, numPorts int) {
	var q usbif.URBRequest
	q.Decode(b)
	port, dev, ep, in, unlink := q.Pipe.Port(), q.Pipe.Device(), q.Pipe.Endpoint(), q.Pipe.In(), q.Pipe.Unlink()
	r.ID, r.Port, r.Devnum, r.Endpoint, r.In, r.Unlink = q.ID, &port, &dev, &ep, &in, &unlink
	r.Type = q.Pipe.Type().String()
	uid, flags, blen, nsegs := uint16(0), q.TransferFlags, q.BufferLength, q.NrBufferSegs
	if unlink {
		uid = q.UnlinkID()
	}
	r.UnlinkID, r.TransferFlags, r.BufferLength, r.NrBufferSegs = &uid, &flags, &blen, &nsegs
	if !unlink && q.Pipe.Type() == usbif.TypeCtrl {
		r.Setup = hex.EncodeToString(q.U[:])
		r.SetupText = q.Setup().String()
	}
	if !unlink && q.Pipe.Type() == usbif.TypeIsoc {
		r.Isoc = &Isoc{q.Interval(), q.StartFrame(), q.NumberOfPackets(), q.NrFrameDescSegs()}
	}
	for i := 0; i < min(q.UsedSegments(), usbif.MaxSegments); i++ {
		s := q.Seg[i]
		r.Segs = append(r.Segs, Segment{s.Gref, s.Offset, s.Length})
	}
	for _, e := range usbif.Anomalies(&q, numPorts) {
		r.Anomalies = append(r.Anomalies, anomalyText(e))
	}
}

// anomalyText turns a usbif finding into "code: detail".
func anomalyText(e error) string {
	var re *usbif.RequestError
	if !errors.As(e, &re) {
		return e.Error()
	}
	code := map[error]string{
		usbif.ErrBadPort: "unknown-port", usbif.ErrTooManySegments: "too-many-segments",
		usbif.ErrSegmentCrossesPage: "segment-crosses-page", usbif.ErrControlLength: "control-length",
		usbif.ErrIsoDescriptors: "iso-descriptors", usbif.ErrReservedBits: "reserved-bits",
		usbif.ErrUndefinedFlags: "undefined-flags", usbif.ErrBufferLength: "buffer-length",
	}[re.Err]
	return code + ": " + re.Err.Error() + " (" + re.Detail + ")"
}

func decodeURBResponse(r *Response, b *[usbif.URBResponseSize]byte) {
	var s usbif.URBResponse
	s.Decode(b)
	st, al, ec, sf := int32(s.Status), s.ActualLength, s.ErrorCount, s.StartFrame
	r.ID, r.StartFrame, r.Status, r.ActualLength, r.ErrorCount = s.ID, &sf, &st, &al, &ec
	r.StatusName = s.Status.String()
	if !s.Status.Known() {
		r.Anomalies = append(r.Anomalies, fmt.Sprintf("unknown-status: %d is not a usbif status; xen-hcd reads it as SHUTDOWN", st))
	}
	if al < 0 {
		r.Anomalies = append(r.Anomalies, fmt.Sprintf("negative-length: actual_length %d", al))
	}
}

func decodeConnResponse(r *Response, b *[usbif.ConnResponseSize]byte, numPorts int) {
	var c usbif.ConnResponse
	c.Decode(b)
	port, speed := c.Port, uint8(c.Speed)
	r.ID, r.Portnum, r.Speed, r.SpeedName = c.ID, &port, &speed, c.Speed.String()
	if port == 0 || int(port) > numPorts {
		r.Anomalies = append(r.Anomalies, fmt.Sprintf("unknown-port: port %d, num-ports %d (xen-hcd: \"Illegal data on conn-ring\")", port, numPorts))
	}
	if !c.Speed.Valid() {
		r.Anomalies = append(r.Anomalies, fmt.Sprintf("bad-speed: speed %d is not 0..3", speed))
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

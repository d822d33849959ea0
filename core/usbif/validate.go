package usbif

import (
	"errors"
	"fmt"
)

// Sentinels for what is wrong with a request; a *RequestError wraps one.
var (
	// ErrBadPort: a request routed by port (address 0, or an unlink of an
	// address-0 request) names port 0 or a port above num-ports. QEMU indexes
	// ports[port-1] unchecked here (§11 #3).
	ErrBadPort = errors.New("port outside 1..num-ports")
	// ErrTooManySegments: nr_buffer_segs (+ nr_frame_desc_segs for iso) > 16.
	ErrTooManySegments = errors.New("more than 16 segments")
	// ErrSegmentCrossesPage: a used segment's offset+length exceeds the page.
	ErrSegmentCrossesPage = errors.New("segment crosses the page end")
	// ErrControlLength: the SETUP packet's wLength exceeds the granted bytes.
	ErrControlLength = errors.New("control wLength exceeds the segments")
	// ErrIsoDescriptors: an isochronous request without room for its
	// frame descriptors (number_of_packets × 16 bytes).
	ErrIsoDescriptors = errors.New("isochronous frame descriptors missing")
)

// RequestError says what is wrong with one request. Err is one of the
// sentinels above; Status is what a backend answers on the ring.
type RequestError struct {
	ID     uint16 // the request's id
	Seg    int    // the offending segment, or -1
	Err    error  // the sentinel
	Detail string // the numbers, for the log
}

// Error reads "urb request 3: segment 2 crosses the page end (offset 4000 + length 200 > 4096)".
func (e *RequestError) Error() string {
	s := fmt.Sprintf("urb request %d: %v", e.ID, e.Err)
	if e.Detail != "" {
		s += " (" + e.Detail + ")"
	}
	return s
}

// Unwrap returns the sentinel.
func (e *RequestError) Unwrap() error { return e.Err }

// Status is the ring status answering a request that failed validation,
// as QEMU answers the same faults: an unknown port is -ENODEV, a malformed
// request -ESHUTDOWN.
func (e *RequestError) Status() Status {
	if errors.Is(e.Err, ErrBadPort) {
		return StatusNoDev
	}
	return StatusShutdown
}

// Validate applies the backend checklist (usbif-protocol.md §10.2, items
// 3, 6, 7, 8 and 10) to a request that has already been copied out of the
// shared page and decoded. numPorts is the vusb's num-ports (1..31). It
// reads only fields meaningful for the request's type, so stale bytes that
// xen-hcd leaves in the other fields are ignored, as are reserved pipe bits
// and undefined flag bits. On success it allocates nothing.
//
// What it cannot see is left to the caller: whether the address or port
// holds a device, duplicate in-flight ids, and the ring-level checks.
func Validate(r *URBRequest, numPorts int) error {
	if e := checkPort(r, numPorts); e != nil {
		return e
	}
	if r.Pipe.Unlink() {
		return nil // an unlink carries no segments; its other fields are stale
	}
	if e := checkSegmentCount(r); e != nil {
		return e
	}
	if e := checkSegmentBounds(r, -1); e != nil {
		return e
	}
	var e *RequestError
	switch r.Pipe.Type() {
	case TypeCtrl:
		e = checkControl(r)
	case TypeIsoc:
		e = checkIsoc(r)
	}
	if e != nil {
		return e // never return a typed nil *RequestError as an error
	}
	return nil
}

// Anomalies lists everything unusual about a request, for ringdump: every
// Validate failure (not just the first) plus things a backend ignores but
// a person debugging a peer wants to see (reserved pipe bits, undefined
// flags, buffer_length disagreeing with the segments).
func Anomalies(r *URBRequest, numPorts int) []error {
	var out []error
	add := func(e *RequestError) {
		if e != nil {
			out = append(out, e)
		}
	}
	if p := r.Pipe.Port(); p == 0 || int(p) > numPorts {
		// Reported whatever the address: xen-hcd always fills the port.
		add(&RequestError{ID: r.ID, Seg: -1, Err: ErrBadPort, Detail: fmt.Sprintf("port %d, num-ports %d", p, numPorts)})
	}
	if res := r.Pipe.Reserved(); res != 0 {
		add(&RequestError{ID: r.ID, Seg: -1, Err: ErrReservedBits, Detail: fmt.Sprintf("pipe 0x%08x, reserved 0x%08x", uint32(r.Pipe), res)})
	}
	if r.Pipe.Unlink() {
		return out
	}
	if f := r.TransferFlags &^ ShortNotOK; f != 0 {
		add(&RequestError{ID: r.ID, Seg: -1, Err: ErrUndefinedFlags, Detail: fmt.Sprintf("transfer_flags 0x%04x", r.TransferFlags)})
	}
	add(checkSegmentCount(r))
	for i := 0; i < MaxSegments; i++ {
		add(checkSegmentBounds(r, i))
	}
	if r.UsedSegments() <= MaxSegments {
		switch r.Pipe.Type() {
		case TypeCtrl:
			add(checkControl(r))
		case TypeIsoc:
			add(checkIsoc(r))
		}
		if n := r.DataLength(); uint16(n) != r.BufferLength {
			add(&RequestError{ID: r.ID, Seg: -1, Err: ErrBufferLength, Detail: fmt.Sprintf("buffer_length %d, segments hold %d", r.BufferLength, n)})
		}
	}
	return out
}

// Informational findings of Anomalies; Validate never returns these.
var (
	ErrReservedBits   = errors.New("reserved pipe bits set")
	ErrUndefinedFlags = errors.New("undefined transfer_flags bits set")
	ErrBufferLength   = errors.New("buffer_length disagrees with the segments")
)

func checkPort(r *URBRequest, numPorts int) *RequestError {
	if r.Pipe.Device() != 0 {
		return nil // routed by address; the port bits are not used (QEMU, xen-hcd)
	}
	if p := r.Pipe.Port(); p == 0 || int(p) > numPorts {
		return &RequestError{ID: r.ID, Seg: -1, Err: ErrBadPort, Detail: fmt.Sprintf("port %d, num-ports %d", p, numPorts)}
	}
	return nil
}

func checkSegmentCount(r *URBRequest) *RequestError {
	if n := r.UsedSegments(); n > MaxSegments {
		return &RequestError{ID: r.ID, Seg: -1, Err: ErrTooManySegments,
			Detail: fmt.Sprintf("nr_buffer_segs %d + nr_frame_desc_segs %d", r.NrBufferSegs, n-int(r.NrBufferSegs))}
	}
	return nil
}

// checkSegmentBounds checks segment only (or every used one when only < 0).
func checkSegmentBounds(r *URBRequest, only int) *RequestError {
	n := r.UsedSegments()
	if n > MaxSegments {
		n = MaxSegments
	}
	for i := 0; i < n; i++ {
		if only >= 0 && i != only {
			continue
		}
		if s := r.Seg[i]; s.End() > PageSize {
			return &RequestError{ID: r.ID, Seg: i, Err: ErrSegmentCrossesPage,
				Detail: fmt.Sprintf("seg %d offset %d + length %d > %d", i, s.Offset, s.Length, PageSize)}
		}
	}
	return nil
}

func checkControl(r *URBRequest) *RequestError {
	if wl, have := int(r.Setup().Length), r.DataLength(); wl > have {
		return &RequestError{ID: r.ID, Seg: -1, Err: ErrControlLength, Detail: fmt.Sprintf("wLength %d, segments hold %d", wl, have)}
	}
	return nil
}

func checkIsoc(r *URBRequest) *RequestError {
	packets := int(r.NumberOfPackets())
	descBytes := 0
	for i := int(r.NrBufferSegs); i < r.UsedSegments(); i++ {
		descBytes += int(r.Seg[i].Length)
	}
	if packets == 0 || descBytes < packets*IsoFrameDescSize {
		return &RequestError{ID: r.ID, Seg: -1, Err: ErrIsoDescriptors,
			Detail: fmt.Sprintf("number_of_packets %d needs %d bytes, descriptor segments hold %d", packets, packets*IsoFrameDescSize, descBytes)}
	}
	return nil
}

// Package ring is the Xen shared I/O ring of xen/io/ring.h over one
// 4096-byte page, generic over the request and response entry types.
//
// The types mirror the C macros so the two can be read side by side:
// Front is a front_ring (FRONT_RING_INIT, RING_PUSH_REQUESTS_AND_CHECK_NOTIFY,
// RING_FINAL_CHECK_FOR_RESPONSES), Back a back_ring (BACK_RING_INIT,
// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY, RING_FINAL_CHECK_FOR_REQUESTS).
//
// The peer writes the page at any time. The only way to read an entry is
// to copy it out once into private memory (NextRequest/NextResponse); the
// producer index is read once per poll and checked before any entry is
// touched, so a double fetch cannot be written with this API.
//
// A Front or Back is used by one goroutine at a time.
package ring

import (
	"errors"
	"fmt"
)

// PageSize is the size of a Xen ring page (one 4 KiB page).
const PageSize = 4096

// Offsets of the shared ring header (struct <name>_sring, DEFINE_RING_TYPES).
const (
	OffReqProd  = 0  // RING_IDX req_prod, written by the front
	OffReqEvent = 4  // RING_IDX req_event, written by the back
	OffRspProd  = 8  // RING_IDX rsp_prod, written by the back
	OffRspEvent = 12 // RING_IDX rsp_event, written by the front
	OffPvt      = 16 // union pvt (unused by usbif)
	OffPad      = 20 // uint8_t __pad[44]
	HeaderSize  = 64 // offsetof(sring, ring)
)

// Entry is the set of entry types a ring can carry: fixed-size byte arrays
// holding an encoded message. Add a size here to carry another protocol.
type Entry interface {
	~[2]byte | ~[4]byte | ~[8]byte | ~[16]byte | ~[32]byte | ~[64]byte | ~[112]byte | ~[148]byte
}

// Layout is where the entries of one ring type lie in the page.
type Layout struct {
	EntrySize int    // sizeof(union <name>_sring_entry) = max(request, response)
	Size      uint32 // entries: __RING_SIZE, a power of two
}

// NewLayout computes the layout for an entry size as __CONST_RING_SIZE
// does: (4096-64)/entrySize rounded down to a power of two.
func NewLayout(entrySize int) Layout {
	if entrySize <= 0 || entrySize > PageSize-HeaderSize {
		panic(fmt.Sprintf("ring: entry size %d does not fit a page", entrySize))
	}
	return Layout{EntrySize: entrySize, Size: roundDownPow2(uint32((PageSize - HeaderSize) / entrySize))}
}

// roundDownPow2 is __RD32.
func roundDownPow2(x uint32) uint32 {
	for x&(x-1) != 0 {
		x &= x - 1
	}
	return x
}

// Slot is the slot an index lands in: idx & (size-1).
func (l Layout) Slot(idx uint32) uint32 { return idx & (l.Size - 1) }

// SlotOffset is the byte offset of the slot an index lands in.
func (l Layout) SlotOffset(idx uint32) int { return HeaderSize + int(l.Slot(idx))*l.EntrySize }

// End is the first byte after the last slot.
func (l Layout) End() int { return HeaderSize + int(l.Size)*l.EntrySize }

// Errors of a ring whose peer broke the protocol. They latch: once a ring
// has seen one, every later poll returns it.
var (
	// ErrRequestOverflow is RING_REQUEST_PROD_OVERFLOW: the front claims
	// more outstanding requests than the ring holds.
	ErrRequestOverflow = errors.New("ring: bogus request producer index")
	// ErrResponseOverflow is RING_RESPONSE_PROD_OVERFLOW: the back claims
	// more responses than there were requests.
	ErrResponseOverflow = errors.New("ring: bogus response producer index")
	// ErrFull: a request was put on a full front ring.
	ErrFull = errors.New("ring: full")
	// ErrNoRequest: a response was put on a back ring with no consumed
	// request left to answer.
	ErrNoRequest = errors.New("ring: response without a consumed request")
)

// IndexError is a latched ring error with the indices that showed it,
// for one log line.
type IndexError struct {
	Err  error  // ErrRequestOverflow or ErrResponseOverflow
	Prod uint32 // the producer index read from the page
	Pvt  uint32 // our private index it was checked against
	Size uint32
}

func (e *IndexError) Error() string {
	return fmt.Sprintf("%v: prod %d, private index %d, ring size %d", e.Err, e.Prod, e.Pvt, e.Size)
}

// Unwrap returns the sentinel.
func (e *IndexError) Unwrap() error { return e.Err }

// Header is a snapshot of the four shared indices.
type Header struct {
	ReqProd, ReqEvent, RspProd, RspEvent uint32
}

// ReadHeader reads the four indices of a page (each with an atomic load).
func ReadHeader(page []byte) Header {
	checkPage(page)
	return Header{
		ReqProd:  load(page, OffReqProd),
		ReqEvent: load(page, OffReqEvent),
		RspProd:  load(page, OffRspProd),
		RspEvent: load(page, OffRspEvent),
	}
}

// InitShared is SHARED_RING_INIT attached at index idx: producers at idx,
// events at idx+1, pvt and padding zeroed. Only the front initialises;
// idx is 0 except in tests that start near the 2^32 wrap.
func InitShared(page []byte, idx uint32) {
	checkPage(page)
	for i := OffPvt; i < HeaderSize; i++ {
		page[i] = 0
	}
	store(page, OffReqEvent, idx+1)
	store(page, OffRspEvent, idx+1)
	store(page, OffRspProd, idx)
	store(page, OffReqProd, idx)
}

func checkPage(page []byte) {
	if len(page) < PageSize {
		panic(fmt.Sprintf("ring: page of %d bytes, need %d", len(page), PageSize))
	}
}

// notifyNeeded is the test of RING_PUSH_*_AND_CHECK_NOTIFY: the peer asked
// to be woken at event, and the push moved prod from old past it.
func notifyNeeded(old, new, event uint32) bool { return new-event < new-old }

// StoreIndex writes a header word (OffReqProd … OffRspEvent) the way a
// peer would, atomically. For tests and tools that play a lying peer on
// a live page; the rings themselves never need it.
func StoreIndex(page []byte, off int, v uint32) {
	checkPage(page)
	store(page, off, v)
}

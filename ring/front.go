package ring

// Front is the frontend's end of a ring (struct <name>_front_ring): it
// produces requests and consumes responses.
type Front[Req, Rsp Entry] struct {
	page       []byte
	layout     Layout
	reqProdPvt uint32 // req_prod_pvt: requests put but maybe not pushed
	rspCons    uint32 // rsp_cons: responses consumed
	avail      uint32 // responses seen by the last Poll and not yet taken
	err        error  // latched protocol error of the back
}

// NewFront is XEN_FRONT_RING_INIT: it initialises the shared header of a
// freshly zeroed page and attaches at index 0.
func NewFront[Req, Rsp Entry](page []byte) *Front[Req, Rsp] {
	return InitFront[Req, Rsp](page, 0)
}

// InitFront is SHARED_RING_INIT + FRONT_RING_ATTACH at index idx. Tests use
// an idx near 2^32 to cross the wrap; everything else uses NewFront.
func InitFront[Req, Rsp Entry](page []byte, idx uint32) *Front[Req, Rsp] {
	InitShared(page, idx)
	return AttachFront[Req, Rsp](page, idx)
}

// AttachFront is FRONT_RING_ATTACH: private indices at idx, the shared
// header left as it is.
func AttachFront[Req, Rsp Entry](page []byte, idx uint32) *Front[Req, Rsp] {
	checkPage(page)
	return &Front[Req, Rsp]{
		page:       page[:PageSize],
		layout:     NewLayout(max(entrySize[Req](), entrySize[Rsp]())),
		reqProdPvt: idx,
		rspCons:    idx,
	}
}

// Layout is the ring's entry size and slot count.
func (f *Front[Req, Rsp]) Layout() Layout { return f.layout }

// Size is RING_SIZE.
func (f *Front[Req, Rsp]) Size() uint32 { return f.layout.Size }

// FreeRequests is RING_FREE_REQUESTS.
func (f *Front[Req, Rsp]) FreeRequests() uint32 {
	return f.layout.Size - (f.reqProdPvt - f.rspCons)
}

// Full is RING_FULL.
func (f *Front[Req, Rsp]) Full() bool { return f.FreeRequests() == 0 }

// Outstanding is how many requests have been put and not yet answered.
func (f *Front[Req, Rsp]) Outstanding() uint32 { return f.reqProdPvt - f.rspCons }

// ReqProdPvt is the private request producer index.
func (f *Front[Req, Rsp]) ReqProdPvt() uint32 { return f.reqProdPvt }

// RspCons is the private response consumer index.
func (f *Front[Req, Rsp]) RspCons() uint32 { return f.rspCons }

// Err is the latched protocol error, if the back broke the ring.
func (f *Front[Req, Rsp]) Err() error { return f.err }

// PutRequest copies req into the next free slot (RING_GET_REQUEST at
// req_prod_pvt, then req_prod_pvt++). The back sees it after PushRequests.
func (f *Front[Req, Rsp]) PutRequest(req *Req) error {
	if f.Full() {
		return ErrFull
	}
	copy(f.page[f.layout.SlotOffset(f.reqProdPvt):], entryBytes(req))
	f.reqProdPvt++
	return nil
}

// PushRequests is RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: publish the put
// requests and report whether the back asked to be notified of them.
func (f *Front[Req, Rsp]) PushRequests() (notify bool) {
	old := load(f.page, OffReqProd)
	// xen_wmb + store: the atomic store publishes the entry copies before the index.
	store(f.page, OffReqProd, f.reqProdPvt)
	// xen_mb: the sequentially consistent store above is ordered before this load.
	return notifyNeeded(old, f.reqProdPvt, load(f.page, OffReqEvent))
}

// Poll reads rsp_prod once, checks it (RING_RESPONSE_PROD_OVERFLOW) and
// returns how many responses NextResponse may now take. A bogus index
// latches ErrResponseOverflow: xen-hcd's "Illegal index on urb-ring".
func (f *Front[Req, Rsp]) Poll() (uint32, error) {
	if f.err != nil {
		return 0, f.err
	}
	prod := load(f.page, OffRspProd) // xen_rmb follows from the atomic load
	if n := prod - f.rspCons; n > f.layout.Size || n > f.reqProdPvt-f.rspCons {
		// More responses than the ring holds, or than requests put.
		f.err = &IndexError{Err: ErrResponseOverflow, Prod: prod, Pvt: f.rspCons, Size: f.layout.Size}
		f.avail = 0
		return 0, f.err
	}
	f.avail = prod - f.rspCons
	return f.avail, nil
}

// NextResponse copies the next response seen by Poll into dst, once
// (RING_COPY_RESPONSE), and advances rsp_cons. It reports false when the
// last Poll's responses are all taken.
func (f *Front[Req, Rsp]) NextResponse(dst *Rsp) bool {
	if f.avail == 0 {
		return false
	}
	copy(entryBytes(dst), f.page[f.layout.SlotOffset(f.rspCons):])
	f.rspCons++
	f.avail--
	return true
}

// FinalCheckForResponses is RING_FINAL_CHECK_FOR_RESPONSES: before going
// to sleep, ask to be notified of the next response and look once more.
func (f *Front[Req, Rsp]) FinalCheckForResponses() (bool, error) {
	if n, err := f.Poll(); n > 0 || err != nil {
		return n > 0, err
	}
	f.SetResponseEvent()
	// xen_mb: the store above is ordered before Poll's load.
	n, err := f.Poll()
	return n > 0, err
}

// SetResponseEvent writes rsp_event = rsp_cons + 1 without re-checking;
// xen-hcd does this when no request is outstanding.
func (f *Front[Req, Rsp]) SetResponseEvent() { store(f.page, OffRspEvent, f.rspCons+1) }

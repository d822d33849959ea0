package ring

// Back is the backend's end of a ring (struct <name>_back_ring): it
// consumes requests and produces responses. The front is not trusted.
type Back[Req, Rsp Entry] struct {
	page       []byte
	layout     Layout
	rspProdPvt uint32 // rsp_prod_pvt: responses put but maybe not pushed
	reqCons    uint32 // req_cons: requests consumed
	avail      uint32 // requests the last Poll allowed and not yet taken
	err        error  // latched protocol error of the front
}

// NewBack is BACK_RING_INIT: private indices 0, the shared header not
// touched (QEMU and the kernel backends attach without initialising).
func NewBack[Req, Rsp Entry](page []byte) *Back[Req, Rsp] { return AttachBack[Req, Rsp](page, 0) }

// AttachBack is BACK_RING_ATTACH at index idx.
func AttachBack[Req, Rsp Entry](page []byte, idx uint32) *Back[Req, Rsp] {
	checkPage(page)
	return &Back[Req, Rsp]{
		page:       page[:PageSize],
		layout:     NewLayout(max(entrySize[Req](), entrySize[Rsp]())),
		rspProdPvt: idx,
		reqCons:    idx,
	}
}

// Layout is the ring's entry size and slot count.
func (b *Back[Req, Rsp]) Layout() Layout { return b.layout }

// Size is RING_SIZE.
func (b *Back[Req, Rsp]) Size() uint32 { return b.layout.Size }

// ReqCons is the private request consumer index.
func (b *Back[Req, Rsp]) ReqCons() uint32 { return b.reqCons }

// RspProdPvt is the private response producer index.
func (b *Back[Req, Rsp]) RspProdPvt() uint32 { return b.rspProdPvt }

// Pending is how many consumed requests still await a response.
func (b *Back[Req, Rsp]) Pending() uint32 { return b.reqCons - b.rspProdPvt }

// Err is the latched protocol error, if the front broke the ring.
func (b *Back[Req, Rsp]) Err() error { return b.err }

// Poll reads req_prod once, checks it, and returns how many requests
// NextRequest may now take: XEN_RING_NR_UNCONSUMED_REQUESTS, the lesser of
// the requests produced and the free response slots, so never more than
// the ring size per pass (RING_REQUEST_CONS_OVERFLOW cannot trip).
//
// The check is RING_REQUEST_PROD_OVERFLOW plus one ring.h leaves out: a
// producer index behind our consumer index (the front cannot un-produce).
// Either latches ErrRequestOverflow, QEMU's "bogus ring requests".
func (b *Back[Req, Rsp]) Poll() (uint32, error) {
	if b.err != nil {
		return 0, b.err
	}
	prod := load(b.page, OffReqProd) // xen_rmb follows from the atomic load
	outstanding := prod - b.rspProdPvt
	if outstanding > b.layout.Size || outstanding < b.reqCons-b.rspProdPvt {
		b.err = &IndexError{Err: ErrRequestOverflow, Prod: prod, Pvt: b.rspProdPvt, Size: b.layout.Size}
		b.avail = 0
		return 0, b.err
	}
	b.avail = min(prod-b.reqCons, b.layout.Size-(b.reqCons-b.rspProdPvt))
	return b.avail, nil
}

// NextRequest copies the next request seen by Poll into dst, once
// (RING_COPY_REQUEST), and advances req_cons. Decode and validate dst,
// never the page. It reports false when the last Poll's requests are taken.
func (b *Back[Req, Rsp]) NextRequest(dst *Req) bool {
	if b.avail == 0 {
		return false
	}
	copy(entryBytes(dst), b.page[b.layout.SlotOffset(b.reqCons):])
	b.reqCons++
	b.avail--
	return true
}

// PutResponse copies rsp into the slot of the oldest unanswered request
// (RING_GET_RESPONSE at rsp_prod_pvt, then rsp_prod_pvt++). The front sees
// it after PushResponses.
func (b *Back[Req, Rsp]) PutResponse(rsp *Rsp) error {
	if b.rspProdPvt == b.reqCons {
		return ErrNoRequest
	}
	copy(b.page[b.layout.SlotOffset(b.rspProdPvt):], entryBytes(rsp))
	b.rspProdPvt++
	return nil
}

// PushResponses is RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish the put
// responses and report whether the front asked to be notified of them.
func (b *Back[Req, Rsp]) PushResponses() (notify bool) {
	old := load(b.page, OffRspProd)
	// xen_wmb + store: the atomic store publishes the entry copies before the index.
	store(b.page, OffRspProd, b.rspProdPvt)
	// xen_mb: the sequentially consistent store is ordered before this load.
	return notifyNeeded(old, b.rspProdPvt, load(b.page, OffRspEvent))
}

// FinalCheckForRequests is RING_FINAL_CHECK_FOR_REQUESTS: before going to
// sleep, ask to be notified of the next request and look once more.
func (b *Back[Req, Rsp]) FinalCheckForRequests() (bool, error) {
	if n, err := b.Poll(); n > 0 || err != nil {
		return n > 0, err
	}
	b.SetRequestEvent()
	// xen_mb: the store above is ordered before Poll's load.
	n, err := b.Poll()
	return n > 0, err
}

// SetRequestEvent writes req_event = req_cons + 1 without re-checking, as
// QEMU's conn ring does after taking each hot-plug credit.
func (b *Back[Req, Rsp]) SetRequestEvent() { store(b.page, OffReqEvent, b.reqCons+1) }

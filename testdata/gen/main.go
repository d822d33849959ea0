// Command gen writes the golden ring pages in testdata/rings: real
// scenarios driven through pvusb's own ring and usbif encoders, and
// invalid-*.urb.bin / invalid-*.conn.bin pages with one anomaly each.
//
//	go run ./testdata/gen            # from the repository root
//	go test ./applets/ringdump -update   # then refresh the .golden/.json
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
)

type (
	urbFront = ring.Front[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte]
	urbBack  = ring.Back[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte]
)

func main() {
	dir := filepath.Join("testdata", "rings")
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fail(err)
	}
	for name, page := range pages() {
		if err := os.WriteFile(filepath.Join(dir, name), page, 0o644); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gen:", err)
	os.Exit(1)
}

// urbRing starts a front at idx and the back attached to it.
func urbRing(idx uint32) ([]byte, *urbFront, *urbBack) {
	page := make([]byte, ring.PageSize)
	return page, ring.InitFront[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](page, idx),
		ring.AttachBack[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](page, idx)
}

func put(f *urbFront, r usbif.URBRequest) {
	var b [usbif.URBRequestSize]byte
	r.Encode(&b)
	if err := f.PutRequest(&b); err != nil {
		fail(err)
	}
	f.PushRequests()
}

// serve lets the back take n requests and answer them with rsps.
func serve(b *urbBack, take int, rsps ...usbif.URBResponse) {
	b.Poll()
	var q [usbif.URBRequestSize]byte
	for i := 0; i < take; i++ {
		if !b.NextRequest(&q) {
			fail(fmt.Errorf("nothing to take"))
		}
	}
	for _, r := range rsps {
		var w [usbif.URBResponseSize]byte
		r.Encode(&w)
		if err := b.PutResponse(&w); err != nil {
			fail(err)
		}
	}
	b.PushResponses()
	b.FinalCheckForRequests()
}

// consume lets the front read every pushed response and re-arm rsp_event.
func consume(f *urbFront) {
	f.Poll()
	var r [usbif.URBResponseSize]byte
	for f.NextResponse(&r) {
	}
	f.FinalCheckForResponses()
}

func ctrl(id uint16, port, dev uint8, in bool, s usbif.SetupPacket, gref uint32) usbif.URBRequest {
	r := usbif.URBRequest{ID: id, Pipe: usbif.NewPipe(port, dev, 0, in, usbif.TypeCtrl)}
	r.SetSetup(s)
	if s.Length > 0 {
		r.NrBufferSegs, r.BufferLength = 1, s.Length
		r.Seg[0] = usbif.Segment{Gref: gref, Offset: 0x100, Length: s.Length}
	}
	return r
}

// bulk is an n-byte bulk transfer split per page as xen-hcd splits it.
func bulk(id uint16, port, dev, ep uint8, in bool, offset, n int, gref uint32) usbif.URBRequest {
	r := usbif.URBRequest{ID: id, Pipe: usbif.NewPipe(port, dev, ep, in, usbif.TypeBulk), BufferLength: uint16(n)}
	for left, off := n, offset; left > 0; off = 0 {
		l := min(usbif.PageSize-off, left)
		r.Seg[r.NrBufferSegs] = usbif.Segment{Gref: gref + uint32(r.NrBufferSegs), Offset: uint16(off), Length: uint16(l)}
		r.NrBufferSegs++
		left -= l
	}
	return r
}

func pages() map[string][]byte {
	out := map[string][]byte{}
	getDev := usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescDevice << 8, Length: 64}

	// enumerate: the guest's first steps on port 1; GET_DESCRIPTOR answered
	// (18 bytes) and read, SET_ADDRESS answered but unread, then a
	// configuration descriptor request taken by the back.
	page, f, b := urbRing(0)
	put(f, ctrl(0, 1, 0, true, getDev, 0x12345))
	serve(b, 1, usbif.URBResponse{ID: 0, ActualLength: 18})
	consume(f)
	put(f, ctrl(1, 1, 0, false, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 2}, 0))
	serve(b, 1, usbif.URBResponse{ID: 1})
	put(f, ctrl(2, 1, 2, true, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescConfiguration << 8, Length: 9}, 0x12346))
	serve(b, 1)
	out["enumerate.urb.bin"] = page

	// bulk-full: a mass-storage read keeps the ring full: 16 × 64 KiB bulk
	// IN (buffer_length wraps to 0), four answered and read first.
	page, f, b = urbRing(0)
	for i := 0; i < 4; i++ {
		put(f, bulk(uint16(i), 2, 3, 1, true, 0, 65536, uint32(100+16*i)))
	}
	serve(b, 4, usbif.URBResponse{ID: 0, ActualLength: 65536}, usbif.URBResponse{ID: 2, ActualLength: 65536},
		usbif.URBResponse{ID: 1, ActualLength: 65536}, usbif.URBResponse{ID: 3, ActualLength: 512})
	consume(f)
	for i := 4; i < 20; i++ {
		put(f, bulk(uint16(i%16), 2, 3, 1, true, 0, 65536, uint32(100+16*i)))
	}
	serve(b, 10)
	out["bulk-full.urb.bin"] = page

	// unlink: a bulk OUT with an unaligned buffer, its unlink, the target
	// answered -EPROTO then the unlink answered 0, near the 2^32 wrap.
	page, f, b = urbRing(1<<32 - 2)
	put(f, bulk(5, 1, 4, 2, false, 0x7f0, 6000, 900))
	r := usbif.URBRequest{ID: 6, Pipe: usbif.NewPipe(1, 4, 2, false, usbif.TypeBulk).WithUnlink()}
	r.SetUnlinkID(5)
	put(f, r)
	serve(b, 2, usbif.URBResponse{ID: 5, Status: usbif.StatusIOError}, usbif.URBResponse{ID: 6})
	put(f, bulk(7, 1, 4, 1, true, 0, 512, 950))
	out["unlink-wrap.urb.bin"] = page

	// isoc: an isochronous IN of 8 packets of 192 bytes with its frame
	// descriptors in a second segment, and an interrupt IN.
	page, f, _ = urbRing(0)
	iso := usbif.URBRequest{ID: 8, Pipe: usbif.NewPipe(3, 5, 3, true, usbif.TypeIsoc), NrBufferSegs: 1, BufferLength: 8 * 192}
	iso.Seg[0] = usbif.Segment{Gref: 300, Offset: 0, Length: 8 * 192}
	iso.Seg[1] = usbif.Segment{Gref: 301, Offset: 0x200, Length: 8 * usbif.IsoFrameDescSize}
	iso.SetIsoc(1, 0, 8, 1)
	put(f, iso)
	intr := usbif.URBRequest{ID: 9, Pipe: usbif.NewPipe(4, 6, 1, true, usbif.TypeIntr), NrBufferSegs: 1, BufferLength: 8}
	intr.Seg[0] = usbif.Segment{Gref: 310, Offset: 0x40, Length: 8}
	intr.SetInterval(8)
	put(f, intr)
	out["isoc-intr.urb.bin"] = page

	// prepost: xen-hcd's conn ring after connect: 512 credits posted; the
	// back answered two (port 1 high speed, port 2 full speed), one read.
	page = make([]byte, ring.PageSize)
	cf := ring.NewFront[[2]byte, [4]byte](page)
	cb := ring.NewBack[[2]byte, [4]byte](page)
	for i := 0; i < usbif.ConnRingSize; i++ {
		var q [2]byte
		(&usbif.ConnRequest{ID: uint16(i)}).Encode(&q)
		cf.PutRequest(&q)
	}
	cf.PushRequests()
	connEvent := func(port uint8, s usbif.Speed) {
		cb.Poll()
		var q [2]byte
		cb.NextRequest(&q)
		var c usbif.ConnRequest
		c.Decode(&q)
		var w [4]byte
		(&usbif.ConnResponse{ID: c.ID, Port: port, Speed: s}).Encode(&w)
		cb.PutResponse(&w)
		cb.SetRequestEvent()
		cb.PushResponses()
	}
	connEvent(1, usbif.SpeedHigh)
	cf.Poll()
	var w [4]byte
	cf.NextResponse(&w)
	var q [2]byte
	(&usbif.ConnRequest{ID: 0}).Encode(&q) // re-post the consumed credit
	cf.PutRequest(&q)
	cf.PushRequests()
	cf.FinalCheckForResponses()
	connEvent(2, usbif.SpeedFull)
	out["prepost.conn.bin"] = page

	// invalid-conn-data: a back that reports port 0 and speed 7.
	page = make([]byte, ring.PageSize)
	copy(page, out["prepost.conn.bin"])
	page[ring.NewLayout(4).SlotOffset(1)+2] = 0
	page[ring.NewLayout(4).SlotOffset(1)+3] = 7
	out["invalid-conn-data.conn.bin"] = page

	// Invalid URB pages, one anomaly each, built on a valid request.
	invalid := func(name string, mutate func(*usbif.URBRequest), header func([]byte)) {
		page, f, _ := urbRing(0)
		r := bulk(1, 1, 2, 1, true, 0, 8192, 40)
		if mutate != nil {
			mutate(&r)
		}
		put(f, r)
		if header != nil {
			header(page)
		}
		out["invalid-"+name+".urb.bin"] = page
	}
	invalid("too-many-segments", func(r *usbif.URBRequest) { r.NrBufferSegs = 17 }, nil)
	invalid("segment-crosses-page", func(r *usbif.URBRequest) { r.Seg[1].Offset = 8 }, nil)
	invalid("reserved-bits", func(r *usbif.URBRequest) { r.Pipe |= 0x00100040 }, nil)
	invalid("unknown-port", func(r *usbif.URBRequest) {
		*r = ctrl(1, 0, 0, true, getDev, 77)
	}, nil)
	invalid("producer-overflow", nil, func(p []byte) { p[ring.OffReqProd] = 40 })
	invalid("control-length", func(r *usbif.URBRequest) {
		*r = ctrl(1, 1, 0, true, getDev, 77)
		r.Seg[0].Length = 8
	}, nil)
	return out
}

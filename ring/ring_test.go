package ring

import (
	"errors"
	"testing"

	"github.com/pvusb/pvusb/internal/ctest"
)

const layoutC = `
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xen/io/usbif.h>
struct r112 { char b[112]; };
struct s16 { char b[16]; };
DEFINE_RING_TYPES(t112, struct r112, struct s16);
#define P(n, x) printf("%s %lld\n", n, (long long)(x))
int main(void) {
  P("sring.req_prod", offsetof(struct usbif_urb_sring, req_prod));
  P("sring.req_event", offsetof(struct usbif_urb_sring, req_event));
  P("sring.rsp_prod", offsetof(struct usbif_urb_sring, rsp_prod));
  P("sring.rsp_event", offsetof(struct usbif_urb_sring, rsp_event));
  P("sring.pvt", offsetof(struct usbif_urb_sring, pvt));
  P("sring.__pad", offsetof(struct usbif_urb_sring, __pad));
  P("sring.ring", offsetof(struct usbif_urb_sring, ring));
  P("conn_sring.ring", offsetof(struct usbif_conn_sring, ring));
  P("urb.size", USB_URB_RING_SIZE); P("conn.size", USB_CONN_RING_SIZE);
  P("urb.end", offsetof(struct usbif_urb_sring, ring) + USB_URB_RING_SIZE * sizeof(union usbif_urb_sring_entry));
  P("conn.end", offsetof(struct usbif_conn_sring, ring) + USB_CONN_RING_SIZE * sizeof(union usbif_conn_sring_entry));
  P("size.112", __CONST_RING_SIZE(t112, 4096)); /* blkif-sized entries: 4032/112 = 36 -> 32 */
  return 0;
}`

func TestLayoutMatchesRingH(t *testing.T) {
	c := ctest.Values(t, ctest.Build(t, "ring_layout", layoutC))
	urb, conn := NewLayout(148), NewLayout(4)
	ctest.Compare(t, c, map[string]int64{
		"sring.req_prod": OffReqProd, "sring.req_event": OffReqEvent, "sring.rsp_prod": OffRspProd,
		"sring.rsp_event": OffRspEvent, "sring.pvt": OffPvt, "sring.__pad": OffPad, "sring.ring": HeaderSize,
		"conn_sring.ring": HeaderSize, "urb.size": int64(urb.Size), "conn.size": int64(conn.Size),
		"urb.end": int64(urb.End()), "conn.end": int64(conn.End()), "size.112": int64(NewLayout(112).Size),
	})
	if urb.SlotOffset(15) != 2284 || urb.SlotOffset(16) != 64 || conn.SlotOffset(511) != 2108 {
		t.Errorf("slot offsets %d %d %d", urb.SlotOffset(15), urb.SlotOffset(16), conn.SlotOffset(511))
	}
}

func newPair(start uint32) ([]byte, *Front[urbReq, urbRsp], *Back[urbReq, urbRsp]) {
	page := make([]byte, PageSize)
	return page, InitFront[urbReq, urbRsp](page, start), AttachBack[urbReq, urbRsp](page, start)
}

func TestInitShared(t *testing.T) {
	page := make([]byte, PageSize)
	for i := range page {
		page[i] = 0xff
	}
	NewFront[urbReq, urbRsp](page)
	if h := ReadHeader(page); h != (Header{0, 1, 0, 1}) {
		t.Errorf("header after init %+v", h)
	}
	for i := OffPvt; i < HeaderSize; i++ {
		if page[i] != 0 {
			t.Fatalf("byte %d of pvt/__pad not zeroed", i)
		}
	}
	if page[HeaderSize] != 0xff {
		t.Error("init touched the entries")
	}
}

func TestRoundTripAndNotify(t *testing.T) {
	for _, start := range []uint32{0, 1<<32 - 3} {
		_, f, b := newPair(start)
		// The back has not asked for anything yet but req_event = start+1:
		// the first push must notify, a second one without a new final check must not.
		var q urbReq
		q[0] = 1
		if f.PutRequest(&q) != nil || !f.PushRequests() {
			t.Fatal("first push should notify")
		}
		q[0] = 2
		if f.PutRequest(&q) != nil || f.PushRequests() {
			t.Fatal("second push should not notify before the back re-arms")
		}
		if n, err := b.Poll(); n != 2 || err != nil {
			t.Fatalf("poll %d %v", n, err)
		}
		var got urbReq
		for i := byte(1); i <= 2; i++ {
			if !b.NextRequest(&got) || got[0] != i {
				t.Fatalf("request %d: %v", i, got[0])
			}
		}
		if b.NextRequest(&got) {
			t.Fatal("NextRequest beyond Poll's count")
		}
		if more, err := b.FinalCheckForRequests(); more || err != nil {
			t.Fatal("final check found work")
		}
		q[0] = 3
		if f.PutRequest(&q) != nil || !f.PushRequests() {
			t.Fatal("push after the back's final check should notify")
		}
		// Responses: the front has not armed rsp_event beyond start+1.
		r := urbRsp{7}
		if b.PutResponse(&r) != nil || !b.PushResponses() {
			t.Fatal("first response should notify")
		}
		if n, _ := f.Poll(); n != 1 || !f.NextResponse(&r) || r[0] != 7 {
			t.Fatal("response lost")
		}
		if f.Outstanding() != 2 || b.Pending() != 1 {
			t.Fatalf("outstanding %d pending %d", f.Outstanding(), b.Pending())
		}
	}
}

func TestFullAndNoRequest(t *testing.T) {
	_, f, b := newPair(0)
	var q urbReq
	for i := 0; i < 16; i++ {
		if err := f.PutRequest(&q); err != nil {
			t.Fatal(err)
		}
	}
	if !f.Full() || !errors.Is(f.PutRequest(&q), ErrFull) {
		t.Fatal("17th request accepted")
	}
	var r urbRsp
	if !errors.Is(b.PutResponse(&r), ErrNoRequest) {
		t.Fatal("response without a consumed request accepted")
	}
}

func TestBogusRequestProducerLatches(t *testing.T) {
	for _, tc := range []struct {
		name string
		prod uint32
	}{
		{"17 outstanding", 17},
		{"huge", 0x80000000},
		{"backwards", 0xffffffff},
	} {
		page, _, b := newPair(0)
		if tc.name == "backwards" {
			store(page, OffReqProd, 4)
			b.Poll()
			var q urbReq
			for b.NextRequest(&q) {
			}
		}
		store(page, OffReqProd, tc.prod)
		n, err := b.Poll()
		var ie *IndexError
		if n != 0 || !errors.Is(err, ErrRequestOverflow) || !errors.As(err, &ie) || ie.Prod != tc.prod {
			t.Fatalf("%s: poll %d %v", tc.name, n, err)
		}
		store(page, OffReqProd, 1) // a sane value later does not clear the latch
		if _, err := b.Poll(); !errors.Is(err, ErrRequestOverflow) || b.Err() == nil {
			t.Fatalf("%s: error did not latch", tc.name)
		}
		if more, err := b.FinalCheckForRequests(); more || err == nil {
			t.Fatalf("%s: final check on a dead ring", tc.name)
		}
	}
}

func TestConsumeBoundedByFreeResponseSlots(t *testing.T) {
	page, f, b := newPair(0)
	var q urbReq
	for i := 0; i < 16; i++ {
		f.PutRequest(&q)
	}
	f.PushRequests()
	if n, _ := b.Poll(); n != 16 {
		t.Fatalf("poll %d", n)
	}
	for b.NextRequest(&q) {
	}
	// A lying front bumps req_prod without the back having answered anything.
	store(page, OffReqProd, 16+16)
	if _, err := b.Poll(); !errors.Is(err, ErrRequestOverflow) {
		t.Fatalf("prod 32 with 16 unanswered: %v", err)
	}
}

func TestBogusResponseProducerLatches(t *testing.T) {
	page, f, _ := newPair(0)
	var q urbReq
	f.PutRequest(&q)
	f.PushRequests()
	store(page, OffRspProd, 2) // two responses to one request
	if _, err := f.Poll(); !errors.Is(err, ErrResponseOverflow) {
		t.Fatalf("poll: %v", err)
	}
	if more, err := f.FinalCheckForResponses(); more || !errors.Is(err, ErrResponseOverflow) {
		t.Fatal("latch lost")
	}
}

func TestConnRingPrepost(t *testing.T) {
	page := make([]byte, PageSize)
	f := NewFront[[2]byte, [4]byte](page)
	b := NewBack[[2]byte, [4]byte](page)
	for i := 0; i < 512; i++ {
		if err := f.PutRequest(&[2]byte{byte(i), byte(i >> 8)}); err != nil {
			t.Fatal(err)
		}
	}
	f.PushRequests()
	if h := ReadHeader(page); h.ReqProd != 512 || f.Size() != 512 {
		t.Fatalf("header %+v", h)
	}
	if n, err := b.Poll(); n != 512 || err != nil {
		t.Fatalf("poll %d %v", n, err)
	}
	var c [2]byte
	b.NextRequest(&c)
	b.PutResponse(&[4]byte{c[0], c[1], 1, 3})
	b.SetRequestEvent()
	b.PushResponses()
	var r [4]byte
	if n, _ := f.Poll(); n != 1 || !f.NextResponse(&r) || r != [4]byte{0, 0, 1, 3} {
		t.Fatalf("conn response %v", r)
	}
	if ReadHeader(page).ReqEvent != 2 {
		t.Fatal("req_event not re-armed")
	}
}

func TestHotPathAllocatesNothing(t *testing.T) {
	_, f, b := newPair(1<<32 - 100)
	var q urbReq
	var r urbRsp
	if n := testing.AllocsPerRun(1000, func() {
		f.PutRequest(&q)
		f.PushRequests()
		b.Poll()
		b.NextRequest(&q)
		b.PutResponse(&r)
		b.PushResponses()
		f.Poll()
		f.NextResponse(&r)
		b.FinalCheckForRequests()
		f.FinalCheckForResponses()
	}); n != 0 {
		t.Errorf("%v allocations per round trip", n)
	}
}

package ringview

import (
	"strings"
	"testing"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/ring"
)

func TestGuess(t *testing.T) {
	page := make([]byte, ring.PageSize)
	f := ring.NewFront[[2]byte, [4]byte](page)
	for i := 0; i < 512; i++ {
		f.PutRequest(&[2]byte{byte(i), byte(i >> 8)})
	}
	f.PushRequests()
	if k, why := Guess(page); k != KindConn || !strings.Contains(why, "512 outstanding") {
		t.Errorf("pre-posted conn ring guessed %s (%s)", k, why)
	}
	page = make([]byte, ring.PageSize)
	u := ring.NewFront[[usbif.URBRequestSize]byte, [usbif.URBResponseSize]byte](page)
	var q [usbif.URBRequestSize]byte
	for i := range q {
		q[i] = 1
	}
	for i := 0; i < 15; i++ {
		u.PutRequest(&q)
	}
	u.PushRequests()
	if k, _ := Guess(page); k != KindURB {
		t.Errorf("full urb ring guessed %s", k)
	}
}

func TestRspAheadOfReq(t *testing.T) {
	page := make([]byte, ring.PageSize)
	ring.InitShared(page, 0)
	page[ring.OffRspProd] = 5 // five responses, no requests
	d, err := Analyze(page, KindURB, 8)
	if err != nil || len(d.Anomalies) != 1 || !strings.Contains(d.Anomalies[0], "ahead of req_prod") || len(d.Responses) != 0 {
		t.Errorf("%v %+v", err, d)
	}
}

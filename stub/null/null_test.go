package null

import (
	"testing"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

func TestCompletesEverythingAtOnce(t *testing.T) {
	d := New()
	done := make(chan *stub.Transfer, 1)
	for _, ep := range []uint8{EndpointIn, EndpointOut} {
		x := &stub.Transfer{Type: usbif.TypeBulk, Endpoint: ep, Buffer: make([]byte, 4096), Done: done}
		if err := d.Submit(x); err != nil {
			t.Fatal(err)
		}
		if r := <-done; r.Status != 0 || r.Actual != 4096 {
			t.Fatalf("ep %#x: %v %d", ep, r.Status, r.Actual)
		}
	}
	if err := d.Submit(&stub.Transfer{Type: usbif.TypeIntr, Endpoint: 0x83, Done: done}); err == nil {
		t.Fatal("an endpoint that is not there accepted a transfer")
	}
	if d.Identity().Product != "pvusb null device" {
		t.Fatal(d.Identity())
	}
}

package usbback

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/xs"
)

// connectGuest joins domain dom and connects its vusb 0 through the XenBus
// frontend machine, returning the frontend once plugged and enumerated.
func connectGuest(t *testing.T, ctx context.Context, h *sim.Hypervisor, dom uint32) (*fronttest.Front, *fronttest.BOT) {
	t.Helper()
	d := simtest.Join(t, h, dom)
	c, err := xs.Dial(d.XenStorePath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	front, err := fronttest.Connect(ctx, d, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 1 {
		t.Fatalf("dom%d plug: %+v %v", dom, ev, err)
	}
	disk := &fronttest.BOT{F: front, Port: 1}
	if _, err := disk.Enumerate(ctx, 2); err != nil {
		t.Fatalf("dom%d: %v", dom, err)
	}
	return front, disk
}

// TestHostileGuestIsQuarantinedAlone: dom1 breaks its ring (a producer
// index past the ring size); its vusb goes to Closing and only it. dom2,
// served by the same daemon, keeps working: 4 MiB written and read back.
func TestHostileGuestIsQuarantinedAlone(t *testing.T) {
	h := simtest.Start(t)
	d0 := simtest.Join(t, h, 0)
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	dir := t.TempDir()
	src := ""
	for _, dom := range []uint32{1, 2} {
		img := filepath.Join(dir, fmt.Sprintf("d%d.img", dom))
		os.WriteFile(img, make([]byte, 8<<20), 0o600)
		src += fmt.Sprintf("[[controller]]\ndomid = %d\ndevid = 0\nports = 4\ncreate = true\n", dom)
	}
	rulesLine := fmt.Sprintf("rules = [%q, %q]\n", "emu-msc:"+filepath.Join(dir, "d1.img")+":1:0:1", "emu-msc:"+filepath.Join(dir, "d2.img")+":2:0:1")
	cfg, err := rules.Decode(rulesLine + src)
	if err != nil {
		t.Fatal(err)
	}
	svc := New(cfg, Platform{XS: c0, Mapper: grant.NewSimMapper(d0), BackDom: 0,
		Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d0), nil }}, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() { cancel(); <-done }()

	bad, _ := connectGuest(t, ctx, h, 1)
	_, good := connectGuest(t, ctx, h, 2)

	// dom1 lies about its producer index.
	be1 := "/local/domain/0/backend/vusb/1/0"
	w, _ := c0.Watch(be1+"/state", "be1")
	page := bad.URBPage()
	hdr := ring.ReadHeader(page)
	binary.LittleEndian.PutUint32(page[ring.OffReqProd:], hdr.RspProd+17)
	bad.Kick()
	for {
		if st, _ := xenbus.ReadState(c0.Handle, be1); st == xenbus.Closing {
			break
		}
		select {
		case <-w.Events:
		case <-ctx.Done():
			t.Fatal("the hostile vusb was not moved to Closing")
		}
	}
	if msg, _ := c0.ReadString("/local/domain/0/error/backend/vusb/1/0/error"); len(msg) < 3 || msg[:3] != "71 " {
		t.Errorf("error node of the quarantined vusb: %q", msg)
	}
	// dom2 is untouched.
	if st, _ := xenbus.ReadState(c0.Handle, "/local/domain/0/backend/vusb/2/0"); st != xenbus.Connected {
		t.Fatalf("dom2's vusb is %v", st)
	}
	data := make([]byte, 4<<20)
	rand.Read(data)
	if err := good.Write(ctx, 0, data); err != nil {
		t.Fatal(err)
	}
	hsum := sha256.New()
	if err := good.Read(ctx, 0, len(data), func(b []byte) { hsum.Write(b) }); err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(hsum.Sum(nil), want[:]) {
		t.Fatal("dom2's data corrupted")
	}
}

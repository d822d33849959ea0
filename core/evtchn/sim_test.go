package evtchn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
)

func pair(t testing.TB) (*evtchn.Sim, *evtchn.Sim, *sim.Domain, *sim.Domain) {
	t.Helper()
	h := simtest.Start(t)
	d0, d1 := simtest.Join(t, h, 0), simtest.Join(t, h, 1)
	return evtchn.NewSim(d0), evtchn.NewSim(d1), d0, d1
}

// expectNone checks that no port fires: Wait must time out. The short
// deadline can only make this test pass wrongly, never fail wrongly.
func expectNone(t *testing.T, c *evtchn.Sim) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if p, err := c.Wait(ctx); err == nil {
		t.Fatalf("port %d fired", p)
	}
}

func TestSimMaskingLatchesEvents(t *testing.T) {
	back, front, d0, _ := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fp, err := front.BindUnbound(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := front.Notify(fp); err != nil { // nobody bound yet: dropped, no error
		t.Fatal(err)
	}
	bp, err := back.BindInterdomain(1, fp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.BindInterdomain(1, fp); err == nil {
		t.Error("a bound port bound twice")
	}
	// One notification fires the port and masks it; two more while it is
	// masked are latched (coalesced, like Xen's pending bit) and fire it
	// exactly once after the unmask.
	if err := front.Notify(fp); err != nil {
		t.Fatal(err)
	}
	if p, err := back.Wait(ctx); err != nil || p != bp {
		t.Fatalf("wait %v %v", p, err)
	}
	front.Notify(fp)
	front.Notify(fp)
	expectNone(t, back)
	back.Unmask(bp)
	if p, err := back.Wait(ctx); err != nil || p != bp {
		t.Fatalf("latched event lost: %v %v", p, err)
	}
	back.Unmask(bp)
	back.Unmask(bp) // unmasking an unmasked port does nothing
	expectNone(t, back)
	// The other direction.
	back.Notify(bp)
	if p, err := front.Wait(ctx); err != nil || p != fp {
		t.Fatalf("front wait %v %v", p, err)
	}
	// Closing one end: the other learns the peer is gone.
	if err := front.Unbind(fp); err != nil {
		t.Fatal(err)
	}
	if err := front.Unbind(fp); !errors.Is(err, evtchn.ErrNotBound) {
		t.Errorf("double unbind: %v", err)
	}
	// The hypervisor told dom0 before answering dom1's unbind, and dom0's
	// messages arrive in order: one round trip on dom0's connection
	// guarantees the notice was handled.
	if _, err := d0.PeerFD(uint32(bp)); !errors.Is(err, sim.ErrPeerGone) {
		t.Errorf("peer fd of a closed channel: %v", err)
	}
	if err := back.Notify(bp); !errors.Is(err, evtchn.ErrPeerGone) {
		t.Errorf("notify after peer closed: %v", err)
	}
	// Close wakes a waiter.
	errc := make(chan error, 1)
	go func() { _, err := back.Wait(context.Background()); errc <- err }()
	back.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, evtchn.ErrClosed) {
			t.Errorf("wait after close: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not wake Wait")
	}
}

//go:build lab

package evtchn

import (
	"context"
	"testing"
	"time"
)

// In the lab's dom0, on real Xen: an unbound port for dom0 bound
// interdomain from a second /dev/xen/evtchn, notified both ways, with the
// masking rule checked.
func TestLabLoopbackChannel(t *testing.T) {
	a, err := OpenXen()
	if err != nil {
		t.Fatalf("lab without evtchn: %v", err)
	}
	defer a.Close()
	b, err := OpenXen()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pa, err := a.BindUnbound(0)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := b.BindInterdomain(0, pa)
	if err != nil {
		t.Fatal(err)
	}
	wait := func(x *Xen, want Port) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		p, err := x.Wait(ctx)
		if err != nil || p != want {
			t.Fatalf("wait: port %d %v, want %d", p, err, want)
		}
	}
	none := func(x *Xen) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if p, err := x.Wait(ctx); err == nil {
			t.Fatalf("port %d fired while masked", p)
		}
	}
	if err := b.Notify(pb); err != nil {
		t.Fatal(err)
	}
	wait(a, pa)
	// Masked now: two more notifications are latched, not delivered...
	b.Notify(pb)
	b.Notify(pb)
	none(a)
	// ...until the write-back unmask.
	if err := a.Unmask(pa); err != nil {
		t.Fatal(err)
	}
	wait(a, pa)
	a.Unmask(pa)
	// The other direction.
	if err := a.Notify(pa); err != nil {
		t.Fatal(err)
	}
	wait(b, pb)
	b.Unmask(pb)
	if err := b.Unbind(pb); err != nil {
		t.Fatal(err)
	}
}

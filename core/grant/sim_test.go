package grant_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
)

func domains(t testing.TB) (*sim.Domain, *sim.Domain) {
	t.Helper()
	h := simtest.Start(t)
	return simtest.Join(t, h, 0), simtest.Join(t, h, 1)
}

func TestSimGrantCopyAndChecks(t *testing.T) {
	d0, d1 := domains(t)
	g, m := grant.NewSimGranter(d1), grant.NewSimMapper(d0)
	out, err := g.Grant(0, 1, false) // an OUT buffer: read-only to the backend
	if err != nil {
		t.Fatal(err)
	}
	in, _ := g.Grant(0, 1, true)
	copy(out.Bytes()[100:], "payload from the guest")
	segs := []grant.CopySegment{
		{Dom: 1, Ref: out.Refs()[0], Offset: 100, Local: make([]byte, 22)},
		{Dom: 1, Ref: in.Refs()[0], Offset: 8, Local: []byte("device data"), ToGrant: true},
		{Dom: 1, Ref: out.Refs()[0], Local: []byte("x"), ToGrant: true}, // into a read-only grant
	}
	err = m.Copy(segs)
	if string(segs[0].Local) != "payload from the guest" || segs[0].Status != grant.StatusOkay {
		t.Errorf("copy from grant: %q %v", segs[0].Local, segs[0].Status)
	}
	if !bytes.HasPrefix(in.Bytes()[8:], []byte("device data")) || segs[1].Status != grant.StatusOkay {
		t.Errorf("copy to grant: %v", segs[1].Status)
	}
	if segs[2].Status != grant.StatusPermissionDenied || !errors.Is(err, grant.StatusPermissionDenied) {
		t.Errorf("copy into a read-only grant: %v %v", segs[2].Status, err)
	}
	// A grant to another domain is not ours to map.
	other, _ := g.Grant(5, 1, true)
	if _, err := m.Map(1, other.Refs(), false); err == nil {
		t.Error("mapped a grant made for dom5")
	}
	// Nothing stays mapped after copies: every grant can end.
	for _, gr := range []grant.Grant{out, in, other} {
		if err := gr.End(); err != nil {
			t.Errorf("end after copy: %v", err)
		}
	}
	if _, err := m.Map(1, out.Refs(), false); err == nil {
		t.Error("ended grant mapped")
	}
}

// dom0 copies through cached tables; a domain that leaves and joins again
// under the same domid is new memory, and copies follow it.
func TestSimCopyFollowsADomainThatJoinsAgain(t *testing.T) {
	h := simtest.Start(t)
	d0 := simtest.Join(t, h, 0)
	m := grant.NewSimMapper(d0)
	for round := 0; round < 2; round++ {
		d1, err := sim.Join(h.Dir(), 1)
		for i := 0; err != nil && i < 1000; i++ { // the hypervisor releases the old one asynchronously
			time.Sleep(5 * time.Millisecond)
			d1, err = sim.Join(h.Dir(), 1)
		}
		if err != nil {
			t.Fatal(err)
		}
		g, _ := grant.NewSimGranter(d1).Grant(0, 1, false)
		msg := []byte{'r', 'o', 'u', 'n', 'd', byte('0' + round)}
		copy(g.Bytes(), msg)
		seg := []grant.CopySegment{{Dom: 1, Ref: g.Refs()[0], Local: make([]byte, len(msg))}}
		// The leave notice reaches dom0 asynchronously: retry until the
		// copy sees this incarnation's page.
		for i := 0; ; i++ {
			if err := m.Copy(seg); err == nil && bytes.Equal(seg[0].Local, msg) {
				break
			}
			if i > 1000 {
				t.Fatalf("round %d: copy %q %v", round, seg[0].Local, seg[0].Status)
			}
			time.Sleep(5 * time.Millisecond)
		}
		d1.Close()
	}
}

package grant_test

import (
	"bytes"
	"errors"
	"testing"

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

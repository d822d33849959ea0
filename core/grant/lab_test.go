//go:build lab

package grant

import (
	"bytes"
	"errors"
	"testing"
)

// In the lab's dom0, on real Xen: pages granted to dom0 itself through
// gntalloc, mapped back through gntdev.
func TestLabGntallocToGntdev(t *testing.T) {
	g, err := OpenXenGranter()
	if err != nil {
		t.Fatalf("lab without gntalloc: %v", err)
	}
	defer g.Close()
	m, err := OpenXenMapper()
	if err != nil {
		t.Fatalf("lab without gntdev: %v", err)
	}
	defer m.Close()

	rw, err := g.Grant(0, 2, true)
	if err != nil {
		t.Fatal(err)
	}
	ro, err := g.Grant(0, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	copy(rw.Bytes(), "written by the granter")
	copy(ro.Bytes(), "read-only page")

	mp, err := m.Map(0, rw.Refs(), true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(mp.Bytes(), []byte("written by the granter")) {
		t.Fatal("mapper does not see the granter's bytes")
	}
	copy(mp.Bytes()[4096:], "written by the mapper")
	if !bytes.HasPrefix(rw.Bytes()[4096:], []byte("written by the mapper")) {
		t.Fatal("granter does not see the mapper's bytes")
	}
	rmp, err := m.Map(0, ro.Refs(), false)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(rmp.Bytes(), []byte("read-only page")) {
		t.Fatal("read-only mapping content")
	}
	if _, err := m.Map(0, ro.Refs(), true); err == nil {
		t.Fatal("a read-only grant was mapped writable")
	} else {
		t.Logf("writable map of a read-only grant refused: %v (ErrReadOnly: %v)", err, errors.Is(err, ErrReadOnly))
	}

	// Grant copy, both directions.
	in := make([]byte, 22)
	segs := []CopySegment{
		{Dom: 0, Ref: rw.Refs()[0], Local: in},
		{Dom: 0, Ref: rw.Refs()[1], Offset: 100, Local: []byte("copied in"), ToGrant: true},
	}
	if err := m.Copy(segs); err != nil {
		t.Fatal(err)
	}
	if string(in) != "written by the granter" || !bytes.HasPrefix(rw.Bytes()[4096+100:], []byte("copied in")) {
		t.Fatalf("grant copy: %q", in)
	}
	ro2 := []CopySegment{{Dom: 0, Ref: ro.Refs()[0], Local: []byte("x"), ToGrant: true}}
	if err := m.Copy(ro2); err == nil || ro2[0].Status == StatusOkay {
		t.Fatalf("copy into a read-only grant: %v %v", err, ro2[0].Status)
	}

	for _, x := range []Mapping{mp, rmp} {
		if err := x.Unmap(); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []Grant{rw, ro} {
		if err := x.End(); err != nil {
			t.Fatal(err)
		}
	}
}

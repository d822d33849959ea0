package sim

import (
	"encoding/binary"
	"errors"
	"sync"
	"testing"
)

// table makes a grant table as a granter lays it out, with one entry.
func table(ref uint32, flags uint16, grantee uint32, frame uint32) []byte {
	t := make([]byte, TablePages*PageSize)
	binary.LittleEndian.PutUint32(t[ref*GrantEntrySize+4:], frame)
	binary.LittleEndian.PutUint32(t[ref*GrantEntrySize:], uint32(flags)|grantee<<16)
	return t
}

func flagsOf(t []byte, ref uint32) uint16 {
	return uint16(binary.LittleEndian.Uint32(t[ref*GrantEntrySize:]))
}

func TestPinChecksLikeXen(t *testing.T) {
	for _, tc := range []struct {
		name     string
		flags    uint16
		grantee  uint32
		frame    uint32
		writable bool
		want     error
	}{
		{"read a read-only grant", GTFPermitAccess | GTFReadonly, 0, 3, false, nil},
		{"write a read-only grant", GTFPermitAccess | GTFReadonly, 0, 3, true, ErrPermission},
		{"someone else's grant", GTFPermitAccess, 7, 3, false, ErrPermission},
		{"entry not in use", 0, 0, 3, false, ErrBadGntref},
		{"frame outside RAM", GTFPermitAccess, 0, 99, false, ErrBadGntref},
	} {
		tb := table(9, tc.flags, tc.grantee, tc.frame)
		frame, err := Pin(tb, 16, 9, 0, tc.writable)
		if !errors.Is(err, tc.want) || (err == nil && frame != tc.frame) {
			t.Errorf("%s: frame %d err %v, want %v", tc.name, frame, err, tc.want)
		}
		if err != nil && flagsOf(tb, 9)&(GTFReading|GTFWriting) != 0 {
			t.Errorf("%s: a refused pin left the entry marked", tc.name)
		}
	}
	if _, err := Pin(table(9, GTFPermitAccess, 0, 1), 16, GrantEntries, 0, false); !errors.Is(err, ErrBadGntref) {
		t.Errorf("ref outside the table: %v", err)
	}
}

// A map (the hypervisor's pin) and a copy (dom0's pin) of the same grant
// overlap: the flags stay while either holds it, and go with the last.
func TestPinsCountAcrossMapsAndCopies(t *testing.T) {
	tb := table(9, GTFPermitAccess, 0, 1)
	if _, err := Pin(tb, 16, 9, 0, true); err != nil { // a writable map
		t.Fatal(err)
	}
	if _, err := Pin(tb, 16, 9, 0, false); err != nil { // a copy out
		t.Fatal(err)
	}
	Unpin(tb, 9, false) // the copy ends
	if f := flagsOf(tb, 9); f&GTFReading == 0 || f&GTFWriting == 0 {
		t.Fatalf("flags %#x after the copy ended: the map still holds it", f)
	}
	Unpin(tb, 9, true)
	if f := flagsOf(tb, 9); f&(GTFReading|GTFWriting) != 0 {
		t.Fatalf("flags %#x after the last unpin", f)
	}
	// Concurrent pinners end with nothing held.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(w bool) {
			defer wg.Done()
			for j := 0; j < 2000; j++ {
				if _, err := Pin(tb, 16, 9, 0, w); err == nil {
					Unpin(tb, 9, w)
				}
			}
		}(i%2 == 0)
	}
	wg.Wait()
	if f := flagsOf(tb, 9); f&(GTFReading|GTFWriting) != 0 || binary.LittleEndian.Uint32(tb[ActiveOffset+9*4:]) != 0 {
		t.Fatalf("flags %#x active %#x after balanced pins", f, binary.LittleEndian.Uint32(tb[ActiveOffset+9*4:]))
	}
}

// A hostile granter holds the lock bit of its own active word: pinning
// gives up after a bounded wait instead of hanging the backend.
func TestPinGivesUpOnAStuckLock(t *testing.T) {
	tb := table(9, GTFPermitAccess, 0, 1)
	binary.LittleEndian.PutUint32(tb[ActiveOffset+9*4:], activeLock)
	if _, err := Pin(tb, 16, 9, 0, false); !errors.Is(err, ErrPinBusy) {
		t.Fatalf("stuck lock: %v", err)
	}
	Unpin(tb, 9, false) // also bounded
}

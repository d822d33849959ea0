package sim

import (
	"encoding/binary"
	"errors"
	"runtime"
)

// The active table: after a domain's grant entries, one 32-bit word per
// entry counts who has the grant in use (Xen keeps this in its private
// active grant table; the simulator shares it so the hypervisor's maps and
// dom0's grant copies, which run in dom0's process as the hypercall would
// run in Xen, pin grants the same way):
//
//	bits 0-14  readers (maps and copies out of the page)
//	bits 15-29 writers (writable maps and copies into the page)
//	bit 31     lock: held while a pinner updates the counts and the
//	           entry's GTF_reading / GTF_writing flags together
//
// The granter never touches these words: it only swaps its entry's flags
// to end access, which fails while GTF_reading or GTF_writing is set. A
// hostile granter can scribble on them, which only denies it service:
// every loop here is bounded.
const (
	ActivePages  = 2
	ActiveOffset = GrantTablePages * PageSize
	// TablePages is the whole grant-table memfd: entries, then the active table.
	TablePages = GrantTablePages + ActivePages

	activeLock    = 1 << 31
	activeReader  = 1
	activeWriter  = 1 << 15
	activeCount   = 1<<15 - 1
	maxLockSpins  = 1 << 14
	maxEntrySpins = 64
)

// Pin errors.
var (
	// ErrPinBusy: the active word stayed locked (a hostile or dead
	// granter's table, or a crashed pinner): the copy fails, nothing hangs.
	ErrPinBusy = errors.New("sim: grant entry locked too long")
	// ErrPinCount: the grant is pinned 32767 times already.
	ErrPinCount = errors.New("sim: grant pinned too often")
)

func lockActive(table []byte, ref uint32) (*uint32, uint32, error) {
	w := wordAt(table, ActiveOffset+int(ref)*4)
	for i := 0; i < maxLockSpins; i++ {
		old := loadWord(w)
		if old&activeLock == 0 && casWord(w, old, old|activeLock) {
			return w, old, nil
		}
		runtime.Gosched()
	}
	return nil, 0, ErrPinBusy
}

// Pin checks grant ref of a table as Xen's grant-table code does (in
// use, granted to grantee, writable only if not read-only, its frame
// inside the granter's ramPages) and marks it in use: GTF_reading (and
// GTF_writing) set on the entry, the count raised. It returns the frame.
// Unpin undoes it.
func Pin(table []byte, ramPages int, ref, grantee uint32, writable bool) (uint32, error) {
	if ref >= GrantEntries || len(table) < TablePages*PageSize {
		return 0, ErrBadGntref
	}
	w, old, err := lockActive(table, ref)
	if err != nil {
		return 0, err
	}
	unlock := func(v uint32) { storeWord(w, v&^activeLock) }
	readers, writers := old&activeCount, old>>15&activeCount
	if readers == activeCount || (writable && writers == activeCount) {
		unlock(old)
		return 0, ErrPinCount
	}
	set := uint32(GTFReading)
	if writable {
		set |= GTFWriting
	}
	entry := wordAt(table, int(ref)*GrantEntrySize)
	for i := 0; ; i++ {
		e := loadWord(entry)
		flags, dom := uint16(e), e>>16
		switch {
		case flags&3 != GTFPermitAccess:
			unlock(old)
			return 0, ErrBadGntref
		case dom != grantee:
			unlock(old)
			return 0, ErrPermission
		case writable && flags&GTFReadonly != 0:
			unlock(old)
			return 0, ErrPermission
		case i == maxEntrySpins:
			unlock(old)
			return 0, ErrPinBusy
		}
		if casWord(entry, e, e|set) {
			break
		}
	}
	n := old + activeReader
	if writable {
		n += activeWriter
	}
	// The frame is read once the entry is pinned: from now on the granter
	// cannot end access, and a frame it changes anyway is checked here.
	frame := binary.LittleEndian.Uint32(table[int(ref)*GrantEntrySize+4:])
	unlock(n)
	if int(frame) >= ramPages {
		Unpin(table, ref, writable)
		return 0, ErrBadGntref
	}
	return frame, nil
}

// Unpin drops one use of ref; the entry's flags clear when the last
// reader or writer is gone. A locked word it cannot get is left (the
// grant then stays pinned: the granter cannot end it, which is safe).
func Unpin(table []byte, ref uint32, writable bool) {
	if ref >= GrantEntries || len(table) < TablePages*PageSize {
		return
	}
	w, old, err := lockActive(table, ref)
	if err != nil {
		return
	}
	readers, writers := old&activeCount, old>>15&activeCount
	if readers > 0 {
		readers--
	}
	if writable && writers > 0 {
		writers--
	}
	clear := uint32(0)
	if writers == 0 {
		clear |= GTFWriting
	}
	if readers == 0 {
		clear |= GTFReading
	}
	entry := wordAt(table, int(ref)*GrantEntrySize)
	for i := 0; i < maxEntrySpins && clear != 0; i++ {
		e := loadWord(entry)
		if e&clear == 0 || casWord(entry, e, e&^clear) {
			break
		}
	}
	storeWord(w, readers|writers<<15)
}

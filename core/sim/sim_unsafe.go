package sim

import (
	"sync/atomic"
	"unsafe"
)

// wordAt views the first 4 bytes of a grant entry (flags | domid<<16) as
// an atomic word. Sound: entries are 8-byte aligned in a page-aligned
// shared mapping, and Go has no 16-bit atomics, so the granter and the
// hypervisor both swap the whole word, as Xen's cmpxchg on the entry does.
func wordAt(table []byte, off int) *uint32 { return (*uint32)(unsafe.Pointer(&table[off])) }

func loadWord(w *uint32) uint32 { return atomic.LoadUint32(w) }

func casWord(w *uint32, old, new uint32) bool { return atomic.CompareAndSwapUint32(w, old, new) }

func storeWord(w *uint32, v uint32) { atomic.StoreUint32(w, v) }

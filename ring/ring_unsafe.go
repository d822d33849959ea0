package ring

import (
	"sync/atomic"
	"unsafe"
)

// load and store access a 32-bit header word of the shared page.
//
// Soundness: offsets are 0, 4, 8 or 12 of a page that is at least
// page-aligned when it comes from mmap (and 4-aligned for a Go []byte of
// PageSize, whose backing array the allocator aligns to at least 8), so
// the *uint32 is aligned. Go's sync/atomic operations are sequentially
// consistent, which gives every barrier ring.h asks for: the store of a
// producer index is a release after the entry copies (xen_wmb), the load
// an acquire before the entry copies (xen_rmb), and a store followed by a
// load of another word is ordered (xen_mb; XCHG on amd64, STLR/LDAR on arm64).
func load(page []byte, off int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&page[off])))
}

func store(page []byte, off int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&page[off])), v)
}

// entryBytes views an entry value as its bytes. Sound because every type
// in the Entry constraint is a byte array: size = length, alignment 1,
// no pointers.
func entryBytes[E Entry](e *E) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(e)), unsafe.Sizeof(*e))
}

// entrySize is sizeof(E) for an Entry type.
func entrySize[E Entry]() int {
	var e E
	return int(unsafe.Sizeof(e))
}

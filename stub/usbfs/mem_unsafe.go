package usbfs

import "unsafe"

// addrOf is the address of b's first byte. Sound because b is always
// anonymous mmap'd memory, which the Go collector neither moves nor frees:
// the kernel may hold the address until the URB is reaped.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// offsetIn is where sub starts inside mem (sub must be a sub-slice of mem).
func offsetIn(mem, sub []byte) int { return int(addrOf(sub) - addrOf(mem)) }

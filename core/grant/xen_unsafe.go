package grant

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlBytes passes arg's first byte as the ioctl argument. Sound: arg is
// a live Go slice for the whole call (the kernel copies in and out before
// returning), and a heap object never moves.
func ioctlBytes(fd int, req uintptr, arg []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(&arg[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// addressOf is the address of memory we mmap'd ourselves (the copy bounce
// buffer), which the garbage collector neither owns nor moves, so handing
// its address to the kernel inside a struct is sound.
func addressOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

// unsafeTable views n copy segments at a kernel-style address, for the
// fake kernel in tests: the address is our own anonymous mapping.
func unsafeTable(addr uint64, n int) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(addr))), n*copySegmentSize)
}

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

// mapFrames reserves one range and maps each frame of fd into it, in
// order, so the caller sees the granted pages contiguously. Sound: the
// range is ours (just reserved), and MAP_FIXED only replaces pages in it.
func mapFrames(fd int, frames []uint32, writable bool) ([]byte, error) {
	n := len(frames) * PageSize
	b, err := unix.Mmap(-1, 0, n, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	for i, f := range frames {
		if _, err := unix.MmapPtr(fd, int64(f)*PageSize, unsafe.Pointer(&b[i*PageSize]), PageSize, prot, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
			unix.Munmap(b)
			return nil, err
		}
	}
	return b, nil
}

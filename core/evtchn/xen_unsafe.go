package evtchn

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl passes arg (or NULL when empty) and returns the ioctl's value.
// Sound: the slice is live for the call and the kernel copies before
// returning.
func ioctl(fd int, req uintptr, arg []byte) (int, error) {
	var p uintptr
	if len(arg) > 0 {
		p = uintptr(unsafe.Pointer(&arg[0]))
	}
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, p)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

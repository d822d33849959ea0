package usbfs

import (
	"errors"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// devFile is a usbfs device file on the Go netpoller: usbfs' poll reports
// writable while completed URBs wait to be reaped and hang-up once the
// device is gone (usbdev_poll), so the reaper parks in the netpoller
// instead of holding an OS thread in a blocking REAPURB.
type devFile struct {
	f  *os.File
	rc syscall.RawConn
}

func openFile(path string) (*devFile, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &devFile{f: f, rc: rc}, nil
}

// ioctl passes arg as is: an address in the Device's mmap'd memory or an
// integer, never a Go pointer.
func (d *devFile) ioctl(req, arg uintptr) (int, error) {
	var r uintptr
	var e unix.Errno
	if err := d.rc.Control(func(fd uintptr) { r, _, e = unix.Syscall(unix.SYS_IOCTL, fd, req, arg) }); err != nil {
		return 0, err
	}
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func (d *devFile) wait(drain func() bool) error {
	return d.rc.Write(func(uintptr) bool { return drain() })
}

func (d *devFile) read() ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for off := int64(0); len(out) < 1<<20; {
		n, err := d.f.ReadAt(buf, off)
		out = append(out, buf[:n]...)
		off += int64(n)
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
	return out, errors.New("descriptors longer than 1 MiB")
}

func (d *devFile) close() error { return d.f.Close() }

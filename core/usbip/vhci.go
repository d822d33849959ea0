package usbip

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/usbif"
)

// VHCI is the guest kernel's vhci-hcd (drivers/usb/usbip/vhci_sysfs.c):
// a device is handed to it by writing "port sockfd devid speed" to
// attach, where sockfd is a connected stream socket whose other end
// speaks USB/IP's URB phase; the kernel takes its own reference to the
// socket. Dir is the platform device's sysfs directory.
type VHCI struct{ Dir string }

// DefaultVHCI is the first vhci-hcd controller.
var DefaultVHCI = VHCI{Dir: "/sys/devices/platform/vhci_hcd.0"}

// ErrNoVHCI: vhci-hcd is not loaded (modprobe vhci-hcd).
var ErrNoVHCI = errors.New("usbip: no vhci-hcd (modprobe vhci-hcd)")

// vdevStNull is VDEV_ST_NULL: a free port in the status file.
const vdevStNull = 4

// VPort is one line of the status file.
type VPort struct {
	Hub    string // "hs" (low/full/high speed) or "ss" (SuperSpeed)
	Port   int
	Status int
	Speed  int
	DevID  uint32
}

// Ports reads the status file ("hub port sta spd dev sockfd local_busid").
func (v VHCI) Ports() ([]VPort, error) {
	f, err := os.Open(filepath.Join(v.Dir, "status"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoVHCI
		}
		return nil, err
	}
	defer f.Close()
	var out []VPort
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 5 || fl[0] == "hub" {
			continue
		}
		p, err1 := strconv.Atoi(fl[1])
		st, err2 := strconv.Atoi(fl[2])
		sp, err3 := strconv.Atoi(fl[3])
		dev, err4 := strconv.ParseUint(fl[4], 16, 32)
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return nil, fmt.Errorf("usbip: vhci status line %q: %w", sc.Text(), err)
		}
		out = append(out, VPort{Hub: fl[0], Port: p, Status: st, Speed: sp, DevID: uint32(dev)})
	}
	return out, sc.Err()
}

// FreePort finds a free port for a device of speed (high-speed hub ports
// for low, full and high speed).
func (v VHCI) FreePort() (int, error) {
	ps, err := v.Ports()
	if err != nil {
		return 0, err
	}
	for _, p := range ps {
		if p.Hub == "hs" && p.Status == vdevStNull {
			return p.Port, nil
		}
	}
	return 0, errors.New("usbip: no free vhci-hcd port")
}

// Attach hands the device behind one end of a socketpair to the kernel
// and returns the other end (ours, to serve with Serve) and the port.
func (v VHCI) Attach(devid uint32, speed usbif.Speed) (*os.File, int, error) {
	port, err := v.FreePort()
	if err != nil {
		return nil, 0, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	kernel := os.NewFile(uintptr(fds[1]), "usbip-vhci")
	defer kernel.Close() // the kernel holds its own reference once attached
	line := fmt.Sprintf("%d %d %d %d", port, fds[1], devid, speed)
	if err := os.WriteFile(filepath.Join(v.Dir, "attach"), []byte(line), 0); err != nil {
		unix.Close(fds[0])
		return nil, 0, fmt.Errorf("usbip: vhci attach %q: %w", line, err)
	}
	return os.NewFile(uintptr(fds[0]), "usbip-ours"), port, nil
}

// Detach takes a device off a vhci-hcd port.
func (v VHCI) Detach(port int) error {
	return os.WriteFile(filepath.Join(v.Dir, "detach"), []byte(strconv.Itoa(port)), 0)
}

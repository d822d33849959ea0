// Package libusb enumerates host USB devices through libusb (gousb), the
// library the project names for device discovery and identity, and cross-
// checks what sysfs says. It is compiled in with the `libusb` build tag
// (build.sh links a libusb built without udev statically); without it,
// List says so. I/O never goes through here: stub/usbfs does that, because
// gousb cannot express what the ring carries (go-stack.md §1).
package libusb

import "errors"

// Errors of List.
var (
	// ErrNotBuilt: this binary was built without the libusb tag.
	ErrNotBuilt = errors.New("libusb: not in this build (build.sh builds it in; go build -tags libusb)")
	// ErrNoUSBFS: no /dev/bus/usb on this system; gousb would panic.
	ErrNoUSBFS = errors.New("no usbfs device files")
)

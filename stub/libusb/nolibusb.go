//go:build !libusb

package libusb

import "github.com/pvusb/pvusb/stub/usbfs"

// Built reports that this binary carries libusb.
const Built = false

// List says this binary has no libusb.
func List() ([]usbfs.Info, error) { return nil, ErrNotBuilt }

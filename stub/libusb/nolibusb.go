//go:build !libusb

package libusb

import "github.com/pvusb/pvusb/stub/usbfs"

// Built reports that this binary carries libusb.
const Built = false

// List says this binary has no libusb.
func List() ([]usbfs.Info, error) { return nil, ErrNotBuilt }

// DiskReader reads a Bulk-Only disk through gousb (not in this build).
type DiskReader struct{}

// Disk says this binary has no libusb.
func Disk(string) (*DiskReader, error) { return nil, ErrNotBuilt }

// Read never runs.
func (*DiskReader) Read(uint32, []byte) error { return ErrNotBuilt }

// Close does nothing.
func (*DiskReader) Close() error { return nil }

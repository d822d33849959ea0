//go:build libusb

package libusb

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/google/gousb"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/usbfs"
)

// Built reports that this binary carries libusb.
const Built = true

// usbfsDir is where libusb looks for device files when built without udev.
const usbfsDir = "/dev/bus/usb"

// List enumerates the host's USB devices through libusb: identity
// (VID:PID, class, manufacturer, product and serial strings), speed, the
// active configuration and the busid made from bus and port path. Root
// hubs are left out. A device that cannot be opened is listed without its
// strings.
func List() (out []usbfs.Info, err error) {
	// gousb panics when libusb_init fails, which a libusb built without
	// udev does wherever /dev/bus/usb is missing (go-stack.md §2).
	if _, serr := os.Stat(usbfsDir); serr != nil {
		return nil, fmt.Errorf("libusb: %s: %w", usbfsDir, ErrNoUSBFS)
	}
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("libusb: init failed: %v", r)
		}
	}()
	ctx := gousb.NewContext()
	defer ctx.Close()
	byBusid := map[string]*usbfs.Info{}
	var order []string
	devs, oerr := ctx.OpenDevices(func(d *gousb.DeviceDesc) bool {
		if len(d.Path) == 0 {
			return false // a root hub
		}
		i := usbfs.Info{Busid: Busid(d.Bus, d.Path), Bus: d.Bus, Dev: d.Address, Speed: speedOf(d.Speed), Mbps: mbps(d.Speed),
			Identity: stub.Identity{VID: uint16(d.Vendor), PID: uint16(d.Product), Class: uint8(d.Class)}}
		byBusid[i.Busid] = &i
		order = append(order, i.Busid)
		return true
	})
	for _, dev := range devs {
		i := byBusid[Busid(dev.Desc.Bus, dev.Desc.Path)]
		if i != nil {
			i.Identity.Manufacturer, _ = dev.Manufacturer()
			i.Identity.Product, _ = dev.Product()
			i.Identity.Serial, _ = dev.SerialNumber()
			if n, err := dev.ActiveConfigNum(); err == nil {
				i.Config = uint8(n)
			}
		}
		dev.Close()
	}
	for _, b := range order {
		out = append(out, *byBusid[b])
	}
	if oerr != nil && len(devs) == 0 && len(order) > 0 {
		return out, fmt.Errorf("libusb: open devices: %w", oerr)
	}
	return out, nil
}

// Busid is the sysfs name of the device at bus and port path: "1-2.3".
func Busid(bus int, path []int) string {
	p := make([]string, len(path))
	for i, n := range path {
		p[i] = strconv.Itoa(n)
	}
	return fmt.Sprintf("%d-%s", bus, strings.Join(p, "."))
}

func speedOf(s gousb.Speed) usbif.Speed {
	switch s {
	case gousb.SpeedLow:
		return usbif.SpeedLow
	case gousb.SpeedFull:
		return usbif.SpeedFull
	case gousb.SpeedHigh:
		return usbif.SpeedHigh
	}
	return usbif.SpeedNone
}

func mbps(s gousb.Speed) string {
	switch s {
	case gousb.SpeedLow:
		return "1.5"
	case gousb.SpeedFull:
		return "12"
	case gousb.SpeedHigh:
		return "480"
	case gousb.SpeedSuper:
		return "5000"
	}
	return "unknown"
}

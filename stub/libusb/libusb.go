//go:build libusb

package libusb

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/google/gousb"

	"github.com/pvusb/pvusb/core/bot"
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

// Disk opens the Bulk-Only disk at busid through gousb, the reference a
// benchmark compares pvusb's path with: interface 0 claimed (the kernel's
// driver detached until Close), READ(10) as CBW, data, CSW.
func Disk(busid string) (d *DiskReader, err error) {
	if _, serr := os.Stat(usbfsDir); serr != nil {
		return nil, fmt.Errorf("libusb: %s: %w", usbfsDir, ErrNoUSBFS)
	}
	defer func() {
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("libusb: init failed: %v", r)
		}
	}()
	ctx := gousb.NewContext()
	devs, err := ctx.OpenDevices(func(desc *gousb.DeviceDesc) bool { return len(desc.Path) > 0 && Busid(desc.Bus, desc.Path) == busid })
	if err != nil && len(devs) == 0 {
		ctx.Close()
		return nil, fmt.Errorf("libusb: open %s: %w", busid, err)
	}
	if len(devs) == 0 {
		ctx.Close()
		return nil, fmt.Errorf("libusb: no device %s", busid)
	}
	dev := devs[0]
	for _, extra := range devs[1:] {
		extra.Close()
	}
	fail := func(err error) (*DiskReader, error) {
		dev.Close()
		ctx.Close()
		return nil, fmt.Errorf("libusb %s: %w", busid, err)
	}
	if err := dev.SetAutoDetach(true); err != nil {
		return fail(err)
	}
	cfgNum, err := dev.ActiveConfigNum()
	if err != nil {
		return fail(err)
	}
	cfg, err := dev.Config(cfgNum)
	if err != nil {
		return fail(err)
	}
	intf, err := cfg.Interface(0, 0)
	if err != nil {
		cfg.Close()
		return fail(err)
	}
	r := &DiskReader{ctx: ctx, dev: dev, cfg: cfg, intf: intf}
	for _, e := range intf.Setting.Endpoints {
		if e.TransferType != gousb.TransferTypeBulk {
			continue
		}
		if e.Direction == gousb.EndpointDirectionIn && r.in == nil {
			r.in, err = intf.InEndpoint(e.Number)
		} else if e.Direction == gousb.EndpointDirectionOut && r.out == nil {
			r.out, err = intf.OutEndpoint(e.Number)
		}
		if err != nil {
			r.Close()
			return nil, err
		}
	}
	if r.in == nil || r.out == nil {
		r.Close()
		return nil, fmt.Errorf("libusb %s: no bulk endpoints on interface 0", busid)
	}
	return r, nil
}

// DiskReader reads a Bulk-Only disk through gousb.
type DiskReader struct {
	ctx  *gousb.Context
	dev  *gousb.Device
	cfg  *gousb.Config
	intf *gousb.Interface
	in   *gousb.InEndpoint
	out  *gousb.OutEndpoint
	tag  uint32
}

// Read runs READ(10) of len(buf) bytes at lba.
func (r *DiskReader) Read(lba uint32, buf []byte) error {
	r.tag++
	cdb := bot.RW10(bot.OpRead10, lba, len(buf)/512)
	if _, err := r.out.Write(bot.NewCBW(r.tag, len(buf), true, cdb[:])); err != nil {
		return err
	}
	for off := 0; off < len(buf); {
		n, err := r.in.Read(buf[off:])
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		off += n
	}
	csw := make([]byte, bot.CSWSize)
	n, err := r.in.Read(csw)
	if err != nil {
		return err
	}
	status, err := bot.CheckCSW(csw[:n], r.tag)
	if err != nil {
		return err
	}
	if status != 0 {
		return fmt.Errorf("READ(10): CSW status %d", status)
	}
	return nil
}

// Close releases the interface (the kernel's driver comes back) and the
// device.
func (r *DiskReader) Close() error {
	r.intf.Close()
	r.cfg.Close()
	r.dev.Close()
	return r.ctx.Close()
}

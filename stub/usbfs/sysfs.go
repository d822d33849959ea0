package usbfs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// Host is the host's USB devices as Linux shows them: sysfs for identity
// (/sys/bus/usb/devices/<busid>) and the usbfs device files
// (/dev/bus/usb/BBB/DDD) for I/O. The roots are fields so tests can point
// them at a tree of their own.
type Host struct {
	Sys string // "/sys"
	Dev string // "/dev"
}

// DefaultHost is the running system's.
var DefaultHost = Host{Sys: "/sys", Dev: "/dev"}

// ErrNoUSB: this system has no USB subsystem (no /sys/bus/usb).
var ErrNoUSB = errors.New("no USB subsystem (/sys/bus/usb is missing)")

// Info describes one host device.
type Info struct {
	Busid    string // "1-2.3"
	Bus, Dev int    // busnum, devnum: /dev/bus/usb/BBB/DDD
	Speed    usbif.Speed
	Mbps     string // sysfs speed: "1.5", "12", "480", "5000", …
	Identity stub.Identity
	Config   uint8 // bConfigurationValue, 0 = unconfigured
}

// Hub reports a hub, which is never passed to a guest (libxl refuses
// bDeviceClass 9 too).
func (i Info) Hub() bool { return i.Identity.Class == 9 }

// SpeedOf maps sysfs' speed (Mb/s) to the conn ring's speeds; SuperSpeed
// and faster have no usbif speed (SpeedNone).
func SpeedOf(mbps string) usbif.Speed {
	switch mbps {
	case "1.5":
		return usbif.SpeedLow
	case "12":
		return usbif.SpeedFull
	case "480":
		return usbif.SpeedHigh
	}
	return usbif.SpeedNone
}

var busidRE = regexp.MustCompile(`^[0-9]+-[0-9]+(\.[0-9]+)*$`)

func (h Host) devices() string { return filepath.Join(h.Sys, "bus", "usb", "devices") }

// Info reads one device's sysfs directory.
func (h Host) Info(busid string) (Info, error) {
	if !busidRE.MatchString(busid) {
		return Info{}, fmt.Errorf("%q is not a USB busid like 1-2.3", busid)
	}
	dir := filepath.Join(h.devices(), busid)
	if _, err := os.Stat(dir); err != nil {
		if _, serr := os.Stat(h.devices()); serr != nil {
			return Info{}, ErrNoUSB
		}
		return Info{}, fmt.Errorf("usb %s: no such device: %w", busid, os.ErrNotExist)
	}
	rd := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name))
		return strings.TrimSpace(string(b))
	}
	num := func(name string, base, bits int) (uint64, error) {
		v, err := strconv.ParseUint(rd(name), base, bits)
		if err != nil {
			return 0, fmt.Errorf("usb %s: sysfs %s: %w", busid, name, err)
		}
		return v, nil
	}
	bus, err1 := num("busnum", 10, 16)
	dev, err2 := num("devnum", 10, 16)
	vid, err3 := num("idVendor", 16, 16)
	pid, err4 := num("idProduct", 16, 16)
	class, err5 := num("bDeviceClass", 16, 8)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return Info{}, err
	}
	cfg, _ := strconv.ParseUint(rd("bConfigurationValue"), 10, 8) // empty when unconfigured
	mbps := rd("speed")
	return Info{
		Busid: busid, Bus: int(bus), Dev: int(dev), Speed: SpeedOf(mbps), Mbps: mbps, Config: uint8(cfg),
		Identity: stub.Identity{VID: uint16(vid), PID: uint16(pid), Class: uint8(class),
			Manufacturer: rd("manufacturer"), Product: rd("product"), Serial: rd("serial")},
	}, nil
}

// List returns every USB device (not root hubs, not interfaces), sorted
// by busid.
func (h Host) List() ([]Info, error) {
	ents, err := os.ReadDir(h.devices())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, ErrNoUSB
		}
		return nil, err
	}
	var out []Info
	for _, e := range ents {
		if !busidRE.MatchString(e.Name()) {
			continue // usbN root hubs, N-M:C.I interfaces
		}
		i, err := h.Info(e.Name())
		if err != nil {
			continue // gone meanwhile, or half there
		}
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Busid < out[b].Busid })
	return out, nil
}

// Find returns the first device (by busid) with vid:pid and, when serial
// is not empty, that serial number.
func (h Host) Find(vid, pid uint16, serial string) (Info, error) {
	all, err := h.List()
	if err != nil {
		return Info{}, err
	}
	for _, i := range all {
		if i.Identity.VID == vid && i.Identity.PID == pid && (serial == "" || i.Identity.Serial == serial) && !i.Hub() {
			return i, nil
		}
	}
	return Info{}, fmt.Errorf("no USB device %04x:%04x%s: %w", vid, pid, ifSerial(serial), os.ErrNotExist)
}

func ifSerial(s string) string {
	if s == "" {
		return ""
	}
	return " with serial " + s
}

// Open takes a host device for a guest: its interfaces are claimed from
// the kernel's drivers (which get them back at Close). onGone is called
// once if the device is unplugged.
func (h Host) Open(busid string, log *slog.Logger, onGone func()) (*Device, error) {
	i, err := h.Info(busid)
	if err != nil {
		return nil, err
	}
	if i.Hub() {
		return nil, fmt.Errorf("usb %s is a hub: hubs are not passed to guests", busid)
	}
	if i.Speed == usbif.SpeedNone {
		return nil, fmt.Errorf("usb %s runs at %s Mb/s: usbif carries low, full and high speed only", busid, i.Mbps)
	}
	path := filepath.Join(h.Dev, "bus", "usb", fmt.Sprintf("%03d", i.Bus), fmt.Sprintf("%03d", i.Dev))
	f, err := openFile(path)
	if err != nil {
		return nil, fmt.Errorf("usb %s: %w", busid, err)
	}
	return newDevice(f, Options{Busid: busid, Identity: i.Identity, Speed: i.Speed, Config: i.Config, Log: log, OnGone: onGone})
}

// Diff compares two listings of the same host (libusb's and sysfs') on
// what both must agree on, and describes every difference ("" if none).
func Diff(a, b []Info) string {
	key := func(i Info) string {
		return fmt.Sprintf("%s bus %d dev %d %04x:%04x class %02x speed %s %q %q %q", i.Busid, i.Bus, i.Dev,
			i.Identity.VID, i.Identity.PID, i.Identity.Class, i.Mbps, i.Identity.Manufacturer, i.Identity.Product, i.Identity.Serial)
	}
	ka, kb := map[string]string{}, map[string]string{}
	for _, i := range a {
		ka[i.Busid] = key(i)
	}
	for _, i := range b {
		kb[i.Busid] = key(i)
	}
	var out []string
	for busid, x := range ka {
		if y, ok := kb[busid]; !ok {
			out = append(out, "only in the first: "+x)
		} else if x != y {
			out = append(out, "first:  "+x+"\nsecond: "+y)
		}
	}
	for busid, y := range kb {
		if _, ok := ka[busid]; !ok {
			out = append(out, "only in the second: "+y)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

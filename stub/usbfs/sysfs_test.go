package usbfs

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pvusb/pvusb/core/usbif"
)

// fakeSys builds a sysfs tree as Linux 6.1 lays it out: device
// directories named by busid, root hubs "usbN", interfaces "N-M:C.I".
func fakeSys(t *testing.T) Host {
	t.Helper()
	root := t.TempDir()
	dev := func(name string, attrs map[string]string) {
		d := filepath.Join(root, "sys", "bus", "usb", "devices", name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range attrs {
			if err := os.WriteFile(filepath.Join(d, k), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	dev("usb1", map[string]string{"busnum": "1", "devnum": "1", "idVendor": "1d6b", "idProduct": "0002", "bDeviceClass": "09", "speed": "480"})
	dev("1-1", map[string]string{"busnum": "1", "devnum": "2", "idVendor": "46f4", "idProduct": "0001", "bDeviceClass": "00",
		"speed": "480", "bConfigurationValue": "1", "manufacturer": "QEMU", "product": "QEMU USB HARDDRIVE", "serial": "LABSTICK01"})
	dev("1-1:1.0", map[string]string{"bInterfaceClass": "08"})
	dev("1-2", map[string]string{"busnum": "1", "devnum": "3", "idVendor": "0409", "idProduct": "55aa", "bDeviceClass": "09", "speed": "480", "bConfigurationValue": "1"})
	dev("1-2.4", map[string]string{"busnum": "1", "devnum": "5", "idVendor": "046d", "idProduct": "c077", "bDeviceClass": "00",
		"speed": "1.5", "bConfigurationValue": "", "product": "USB Optical Mouse"})
	dev("2-1", map[string]string{"busnum": "2", "devnum": "2", "idVendor": "0781", "idProduct": "5581", "bDeviceClass": "00", "speed": "5000", "bConfigurationValue": "1"})
	dev("1-3", map[string]string{"busnum": "x"})
	return Host{Sys: filepath.Join(root, "sys"), Dev: filepath.Join(root, "dev")}
}

func TestSysfsInfoAndList(t *testing.T) {
	h := fakeSys(t)
	i, err := h.Info("1-1")
	if err != nil {
		t.Fatal(err)
	}
	if i.Bus != 1 || i.Dev != 2 || i.Speed != usbif.SpeedHigh || i.Config != 1 || i.Identity.VID != 0x46f4 ||
		i.Identity.Serial != "LABSTICK01" || i.Identity.Product != "QEMU USB HARDDRIVE" || i.Hub() {
		t.Fatalf("%+v", i)
	}
	m, err := h.Info("1-2.4")
	if err != nil || m.Speed != usbif.SpeedLow || m.Config != 0 {
		t.Fatalf("unconfigured low-speed mouse: %+v %v", m, err)
	}
	all, err := h.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range all {
		names = append(names, i.Busid)
	}
	if got := strings.Join(names, " "); got != "1-1 1-2 1-2.4 2-1" {
		t.Fatalf("list %q (root hubs, interfaces and broken entries left out)", got)
	}
	if _, err := h.Info("1-3"); err == nil {
		t.Fatal("a broken busnum was accepted")
	}
	if _, err := h.Info("1-9"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing device: %v", err)
	}
	if _, err := h.Info("../../etc"); err == nil {
		t.Fatal("a path was accepted as a busid")
	}
}

func TestFindByIdentity(t *testing.T) {
	h := fakeSys(t)
	if i, err := h.Find(0x46f4, 0x0001, ""); err != nil || i.Busid != "1-1" {
		t.Fatalf("%+v %v", i, err)
	}
	if i, err := h.Find(0x46f4, 0x0001, "LABSTICK01"); err != nil || i.Busid != "1-1" {
		t.Fatalf("with serial: %+v %v", i, err)
	}
	if _, err := h.Find(0x46f4, 0x0001, "OTHER"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("wrong serial: %v", err)
	}
	if _, err := h.Find(0x0409, 0x55aa, ""); err == nil {
		t.Fatal("a hub was found for a guest")
	}
}

func TestOpenRefusals(t *testing.T) {
	h := fakeSys(t)
	if _, err := h.Open("1-2", nil, nil); err == nil || !strings.Contains(err.Error(), "hub") {
		t.Fatalf("hub: %v", err)
	}
	if _, err := h.Open("2-1", nil, nil); err == nil || !strings.Contains(err.Error(), "5000") {
		t.Fatalf("SuperSpeed: %v", err)
	}
	if _, err := h.Open("1-1", nil, nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no device file: %v", err)
	}
	if _, err := (Host{Sys: t.TempDir()}).List(); !errors.Is(err, ErrNoUSB) {
		t.Fatalf("no USB: %v", err)
	}
}

func TestDiffNamesEveryDisagreement(t *testing.T) {
	h := fakeSys(t)
	a, _ := h.List()
	b, _ := h.List()
	if d := Diff(a, b); d != "" {
		t.Fatalf("same listing differs: %s", d)
	}
	b[0].Identity.Serial = "OTHER"
	b = b[:len(b)-1]
	d := Diff(a, b)
	if !strings.Contains(d, `"LABSTICK01"`) || !strings.Contains(d, `"OTHER"`) || !strings.Contains(d, "only in the first: 2-1") {
		t.Fatalf("diff:\n%s", d)
	}
}

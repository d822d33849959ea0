//go:build libusb

package libusb

import (
	"errors"
	"os"
	"testing"

	"github.com/google/gousb"

	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub/usbfs"
)

func TestBusidAndSpeeds(t *testing.T) {
	if got := Busid(1, []int{2, 3}); got != "1-2.3" {
		t.Fatal(got)
	}
	if got := Busid(12, []int{4}); got != "12-4" {
		t.Fatal(got)
	}
	for s, want := range map[gousb.Speed]usbif.Speed{gousb.SpeedLow: usbif.SpeedLow, gousb.SpeedFull: usbif.SpeedFull,
		gousb.SpeedHigh: usbif.SpeedHigh, gousb.SpeedSuper: usbif.SpeedNone} {
		if speedOf(s) != want || usbfs.SpeedOf(mbps(s)) != want {
			t.Errorf("speed %v: %v / %v", s, speedOf(s), usbfs.SpeedOf(mbps(s)))
		}
	}
}

// Where there is no usbfs (CI), List must say so instead of letting gousb
// panic; where there is (the lab's dom0), it must agree with sysfs.
func TestListNeverPanicsAndAgreesWithSysfs(t *testing.T) {
	got, err := List()
	if _, serr := os.Stat(usbfsDir); serr != nil {
		if !errors.Is(err, ErrNoUSBFS) {
			t.Fatalf("without %s: %v", usbfsDir, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	sys, err := usbfs.DefaultHost.List()
	if err != nil {
		t.Fatal(err)
	}
	if d := usbfs.Diff(got, sys); d != "" {
		t.Fatalf("libusb and sysfs disagree:\n%s", d)
	}
}

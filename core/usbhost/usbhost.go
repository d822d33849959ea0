// Package usbhost is a small USB host stack over a frontend: it
// enumerates the device on a root-hub port the way Linux's hub driver
// does (GET_DESCRIPTOR at address 0, SET_ADDRESS, descriptors, strings,
// SET_CONFIGURATION) and offers control, bulk and interrupt transfers,
// and clients for the classes pvusb emulates (Bulk-Only disks, HID, ACM).
// pvusb's own demo, bench and usbfront list use it; a guest kernel uses
// its own stack instead, through USB/IP.
package usbhost

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
)

// Host hands out device addresses on one frontend (one per controller,
// 1..127, as the hub driver does).
type Host struct {
	F *frontend.Frontend

	mu   sync.Mutex
	used [128]bool
}

// Device is an enumerated device on a port.
type Device struct {
	Host   *Host
	Port   uint8
	Addr   uint8
	Speed  usbif.Speed
	Desc   usbdesc.Device
	Config usbdesc.Config
	// RawConfig is the active configuration's descriptor set as read.
	RawConfig []byte
	// Strings (empty when the device has none or refuses them).
	Manufacturer, Product, Serial string
}

// StatusError is a transfer that completed with a non-zero status.
type StatusError struct {
	Op     string
	Status usbif.Status
}

func (e *StatusError) Error() string { return fmt.Sprintf("%s: %v", e.Op, e.Status) }

// ErrStall is wrapped by a StatusError of STALL.
var ErrStall = errors.New("usbhost: stall")

// Is makes errors.Is(err, ErrStall) work for a stalled transfer.
func (e *StatusError) Is(target error) bool {
	return target == ErrStall && e.Status == usbif.StatusStall
}

// Do submits u and waits for it (a cancelled ctx unlinks it).
func Do(ctx context.Context, f *frontend.Frontend, u *frontend.URB) error {
	done := make(chan *frontend.URB, 1)
	u.Done = done
	if err := f.Submit(u); err != nil {
		return err
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		f.Unlink(u)
		<-done
		return ctx.Err()
	}
}

// control runs a control transfer to addr on port.
func (h *Host) control(ctx context.Context, port, addr uint8, s usbif.SetupPacket, data []byte) (int, error) {
	u := &frontend.URB{Port: port, Addr: addr, Type: usbif.TypeCtrl, Setup: s, Buffer: data[:s.Length]}
	if err := Do(ctx, h.F, u); err != nil {
		return 0, err
	}
	if u.Status != usbif.StatusOK {
		return u.Actual, &StatusError{Op: s.String(), Status: u.Status}
	}
	return u.Actual, nil
}

func (h *Host) takeAddr() (uint8, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for a := 1; a < 128; a++ {
		if !h.used[a] {
			h.used[a] = true
			return uint8(a), nil
		}
	}
	return 0, errors.New("usbhost: 127 devices already")
}

// Release gives a device's address back (after it left).
func (h *Host) Release(d *Device) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.used[d.Addr] = false
}

// Enumerate brings up the device that just connected on port.
func (h *Host) Enumerate(ctx context.Context, port uint8, speed usbif.Speed) (*Device, error) {
	buf := make([]byte, 64)
	// The hub driver's first look: up to 64 bytes of the device
	// descriptor at address 0 (it needs bMaxPacketSize0).
	getDev := usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescDevice << 8, Length: 64}
	if _, err := h.control(ctx, port, 0, getDev, buf); err != nil {
		return nil, fmt.Errorf("port %d: device descriptor at address 0: %w", port, err)
	}
	addr, err := h.takeAddr()
	if err != nil {
		return nil, err
	}
	if _, err := h.control(ctx, port, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: uint16(addr)}, nil); err != nil {
		h.Release(&Device{Addr: addr})
		return nil, fmt.Errorf("port %d: SET_ADDRESS %d: %w", port, addr, err)
	}
	d := &Device{Host: h, Port: port, Addr: addr, Speed: speed}
	fail := func(err error) (*Device, error) {
		h.Release(d)
		return nil, err
	}
	getDev.Length = usbdesc.DeviceSize
	n, err := d.Control(ctx, getDev, buf)
	if err != nil {
		return fail(err)
	}
	if d.Desc, err = usbdesc.ParseDevice(buf[:n]); err != nil {
		return fail(err)
	}
	getCfg := usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescConfiguration << 8, Length: usbdesc.ConfigSize}
	if n, err = d.Control(ctx, getCfg, buf); err != nil || n < usbdesc.ConfigSize {
		return fail(fmt.Errorf("configuration header: %d bytes, %v", n, err))
	}
	total := int(buf[2]) | int(buf[3])<<8
	if total < usbdesc.ConfigSize || total > 4096 {
		return fail(fmt.Errorf("configuration of %d bytes", total))
	}
	cfgBuf := make([]byte, total)
	getCfg.Length = uint16(total)
	if n, err = d.Control(ctx, getCfg, cfgBuf); err != nil {
		return fail(err)
	}
	if d.Config, _, err = usbdesc.ParseConfig(cfgBuf[:n]); err != nil {
		return fail(err)
	}
	d.RawConfig = cfgBuf[:n]
	d.Manufacturer = d.String(ctx, d.Desc.Manufacturer)
	d.Product = d.String(ctx, d.Desc.Product)
	d.Serial = d.String(ctx, d.Desc.Serial)
	if _, err := d.Control(ctx, usbif.SetupPacket{Request: usbif.ReqSetConfiguration, Value: uint16(d.Config.Value)}, nil); err != nil {
		return fail(fmt.Errorf("SET_CONFIGURATION %d: %w", d.Config.Value, err))
	}
	return d, nil
}

// String reads string descriptor idx in US English ("" if none).
func (d *Device) String(ctx context.Context, idx uint8) string {
	if idx == 0 {
		return ""
	}
	buf := make([]byte, 255)
	n, err := d.Control(ctx, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescString<<8 | uint16(idx), Index: 0x0409, Length: 255}, buf)
	if err != nil {
		return ""
	}
	s, _ := usbdesc.String(buf[:n])
	return s
}

// Control runs a control transfer; data is the OUT data or room for the
// IN data (at least wLength bytes).
func (d *Device) Control(ctx context.Context, s usbif.SetupPacket, data []byte) (int, error) {
	if len(data) < int(s.Length) {
		return 0, fmt.Errorf("usbhost: %d bytes for wLength %d", len(data), s.Length)
	}
	return d.Host.control(ctx, d.Port, d.Addr, s, data)
}

// URB makes a URB for endpoint ep of this device.
func (d *Device) URB(typ usbif.PipeType, ep uint8, buf []byte) *frontend.URB {
	return &frontend.URB{Port: d.Port, Addr: d.Addr, Endpoint: ep, Type: typ, Buffer: buf}
}

// Transfer runs one bulk or interrupt transfer and returns the bytes moved.
func (d *Device) Transfer(ctx context.Context, typ usbif.PipeType, ep uint8, buf []byte) (int, error) {
	u := d.URB(typ, ep, buf)
	if err := Do(ctx, d.Host.F, u); err != nil {
		return 0, err
	}
	if u.Status != usbif.StatusOK {
		return u.Actual, &StatusError{Op: fmt.Sprintf("endpoint 0x%02x", ep), Status: u.Status}
	}
	return u.Actual, nil
}

// ClearHalt clears a stalled endpoint (CLEAR_FEATURE(ENDPOINT_HALT)).
func (d *Device) ClearHalt(ctx context.Context, ep uint8) error {
	_, err := d.Control(ctx, usbif.SetupPacket{RequestType: 0x02, Request: usbif.ReqClearFeature, Value: usbif.FeatureEndpointHalt, Index: uint16(ep)}, nil)
	return err
}

// Endpoint finds the first endpoint of a transfer type and direction in
// the active configuration's alternate setting 0 of interface class
// (0xff: any class).
func (d *Device) Endpoint(class, xfer uint8, in bool) (uint8, bool) {
	for _, it := range d.Config.Interfaces {
		if it.Alt != 0 || (class != 0xff && it.Class != class) {
			continue
		}
		for _, e := range it.Endpoints {
			if e.Type() == xfer && e.In() == in {
				return e.Address, true
			}
		}
	}
	return 0, false
}

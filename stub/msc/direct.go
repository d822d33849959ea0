package msc

import (
	"fmt"

	wire "github.com/pvusb/pvusb/core/bot"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// Direct drives a Bulk-Only disk by calling the device in this process:
// the same three transfers per command (CBW, data in 64 KiB transfers,
// CSW) a host sends, without any transport. Benchmarks measure against
// it. It allocates nothing per command. Not safe for concurrent use.
type Direct struct {
	Dev  stub.Device
	t    stub.Transfer
	done chan *stub.Transfer
	cbw  [wire.CBWSize]byte
	csw  [wire.CSWSize]byte
	tag  uint32
}

// NewDirect wraps an emulated disk (Open).
func NewDirect(dev stub.Device) *Direct {
	return &Direct{Dev: dev, done: make(chan *stub.Transfer, 1)}
}

func (d *Direct) xfer(ep uint8, buf []byte) error {
	d.t = stub.Transfer{Type: usbif.TypeBulk, Endpoint: ep, Buffer: buf, Done: d.done}
	if err := d.Dev.Submit(&d.t); err != nil {
		return err
	}
	if t := <-d.done; t.Status != usbif.StatusOK {
		return fmt.Errorf("endpoint %#x: %v", ep, t.Status)
	}
	return nil
}

// Read runs READ(10) of len(buf) bytes at lba.
func (d *Direct) Read(lba uint32, buf []byte) error {
	d.tag++
	cdb := wire.RW10(wire.OpRead10, lba, len(buf)/BlockSize)
	wire.PutCBW(d.cbw[:], d.tag, len(buf), true, cdb[:])
	if err := d.xfer(EndpointOut, d.cbw[:]); err != nil {
		return err
	}
	for off := 0; off < len(buf); off += 64 << 10 {
		if err := d.xfer(EndpointIn, buf[off:min(off+64<<10, len(buf))]); err != nil {
			return err
		}
	}
	if err := d.xfer(EndpointIn, d.csw[:]); err != nil {
		return err
	}
	if st, err := wire.CheckCSW(d.csw[:], d.tag); err != nil || st != statusGood {
		return fmt.Errorf("READ(10) at %d: CSW status %d %v", lba, st, err)
	}
	return nil
}

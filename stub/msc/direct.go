package msc

import (
	"encoding/binary"
	"fmt"

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
	cbw  [cbwSize]byte
	csw  [cswSize]byte
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
	c := d.cbw[:]
	clear(c)
	binary.LittleEndian.PutUint32(c, cbwSignature)
	binary.LittleEndian.PutUint32(c[4:], d.tag)
	binary.LittleEndian.PutUint32(c[8:], uint32(len(buf)))
	c[12], c[14], c[15] = 0x80, 10, 0x28
	binary.BigEndian.PutUint32(c[17:], lba)
	binary.BigEndian.PutUint16(c[22:], uint16(len(buf)/BlockSize))
	if err := d.xfer(EndpointOut, c); err != nil {
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
	if d.csw[12] != statusGood {
		return fmt.Errorf("READ(10) at %d: CSW status %d", lba, d.csw[12])
	}
	return nil
}

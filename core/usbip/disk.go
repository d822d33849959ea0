package usbip

import (
	"encoding/binary"
	"fmt"

	"github.com/pvusb/pvusb/core/bot"
)

// Disk is a Bulk-Only Transport disk (USB MSC BOT, SCSI commands) used
// over an imported connection: a client's view, for pvusb's demo and
// tests. One command at a time; each data phase is one USB/IP transfer
// (the exporter splits it into ring URBs).
type Disk struct {
	K       *Conn
	In, Out uint32 // bulk endpoint numbers
	tag     uint32
}

// Command runs one SCSI command: CBW, data (IN: n bytes returned; OUT:
// data sent), CSW. A CSW status other than 0 is an error.
func (d *Disk) Command(cdb, data []byte, in bool) ([]byte, error) {
	d.tag++
	cbw := bot.NewCBW(d.tag, len(data), in, cdb)
	ok := func(r *Result, err error, what string) error {
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if r.Status != 0 {
			return fmt.Errorf("%s: status %d", what, r.Status)
		}
		return nil
	}
	r, err := d.K.Do(DirOut, d.Out, [8]byte{}, cbw, 0)
	if err := ok(r, err, "CBW"); err != nil {
		return nil, err
	}
	var got []byte
	if len(data) > 0 {
		if in {
			r, err = d.K.Do(DirIn, d.In, [8]byte{}, nil, len(data))
			got = r.Data
		} else {
			r, err = d.K.Do(DirOut, d.Out, [8]byte{}, data, 0)
		}
		if err := ok(r, err, "data"); err != nil {
			return nil, err
		}
	}
	r, err = d.K.Do(DirIn, d.In, [8]byte{}, nil, bot.CSWSize)
	if err := ok(r, err, "CSW"); err != nil {
		return nil, err
	}
	status, err := bot.CheckCSW(r.Data, d.tag)
	if err != nil {
		return nil, err
	}
	if status != 0 {
		return nil, fmt.Errorf("SCSI %#x: CSW status %d", cdb[0], status)
	}
	return got, nil
}

// Read reads n bytes (whole 512-byte blocks, at most 32 MiB) at lba.
func (d *Disk) Read(lba uint32, n int) ([]byte, error) {
	cdb := bot.RW10(bot.OpRead10, lba, n/512)
	return d.Command(cdb[:], make([]byte, n), true)
}

// Write writes data (whole 512-byte blocks) at lba.
func (d *Disk) Write(lba uint32, data []byte) error {
	cdb := bot.RW10(bot.OpWrite10, lba, len(data)/512)
	_, err := d.Command(cdb[:], data, false)
	return err
}

// Capacity is READ CAPACITY(10): blocks and block size.
func (d *Disk) Capacity() (uint64, int, error) {
	b, err := d.Command([]byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 8), true)
	if err != nil {
		return 0, 0, err
	}
	return uint64(binary.BigEndian.Uint32(b)) + 1, int(binary.BigEndian.Uint32(b[4:])), nil
}

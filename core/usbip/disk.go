package usbip

import (
	"encoding/binary"
	"fmt"
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
	cbw := make([]byte, 31)
	binary.LittleEndian.PutUint32(cbw, 0x43425355)
	binary.LittleEndian.PutUint32(cbw[4:], d.tag)
	binary.LittleEndian.PutUint32(cbw[8:], uint32(len(data)))
	if in {
		cbw[12] = 0x80
	}
	cbw[14] = byte(len(cdb))
	copy(cbw[15:], cdb)
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
	r, err = d.K.Do(DirIn, d.In, [8]byte{}, nil, 13)
	if err := ok(r, err, "CSW"); err != nil {
		return nil, err
	}
	if len(r.Data) != 13 || binary.LittleEndian.Uint32(r.Data) != 0x53425355 || binary.LittleEndian.Uint32(r.Data[4:]) != d.tag {
		return nil, fmt.Errorf("bad CSW % x", r.Data)
	}
	if r.Data[12] != 0 {
		return nil, fmt.Errorf("SCSI %#x: CSW status %d", cdb[0], r.Data[12])
	}
	return got, nil
}

func rw10(op byte, lba uint32, blocks int) []byte {
	cdb := []byte{op, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(cdb[2:], lba)
	binary.BigEndian.PutUint16(cdb[7:], uint16(blocks))
	return cdb
}

// Read reads n bytes (whole 512-byte blocks, at most 32 MiB) at lba.
func (d *Disk) Read(lba uint32, n int) ([]byte, error) {
	return d.Command(rw10(0x28, lba, n/512), make([]byte, n), true)
}

// Write writes data (whole 512-byte blocks) at lba.
func (d *Disk) Write(lba uint32, data []byte) error {
	_, err := d.Command(rw10(0x2a, lba, len(data)/512), data, false)
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

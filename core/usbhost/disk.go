package usbhost

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/pvusb/pvusb/core/bot"
	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/usbif"
)

// Disk is a Bulk-Only Transport mass-storage device (USB MSC BOT 1.0)
// speaking the SCSI transparent command set: what Linux's usb-storage
// does for a stick, reduced to what pvusb's demo and bench need. One
// command at a time (BOT is serial); a command's data moves in 64 KiB
// URBs, all submitted at once, so the ring stays full.
type Disk struct {
	D         *Device
	in, out   uint8
	tag       uint32
	Blocks    uint64
	BlockSize int
	Vendor    string // INQUIRY vendor and product
	Model     string
}

// CheckCondition is a command that ended with CSW status 1; Sense is
// what REQUEST SENSE said (key, ASC, ASCQ).
type CheckCondition struct {
	Op    string
	Sense [3]byte
}

func (e *CheckCondition) Error() string {
	return fmt.Sprintf("%s: check condition, sense key %#x asc %#x ascq %#x", e.Op, e.Sense[0], e.Sense[1], e.Sense[2])
}

// OpenDisk finds the device's Bulk-Only interface and reads its size.
func OpenDisk(ctx context.Context, d *Device) (*Disk, error) {
	const classMassStorage = 0x08
	in, ok1 := d.Endpoint(classMassStorage, 2, true)
	out, ok2 := d.Endpoint(classMassStorage, 2, false)
	if !ok1 || !ok2 {
		return nil, errors.New("usbhost: no Bulk-Only interface")
	}
	k := &Disk{D: d, in: in, out: out}
	inq := make([]byte, 36)
	if err := k.command(ctx, "INQUIRY", []byte{0x12, 0, 0, 0, 36, 0}, inq, true); err != nil {
		return nil, err
	}
	k.Vendor, k.Model = strings.TrimSpace(string(inq[8:16])), strings.TrimSpace(string(inq[16:32]))
	// A fresh device reports a unit attention once; TEST UNIT READY takes it.
	for i := 0; i < 3; i++ {
		if err := k.command(ctx, "TEST UNIT READY", make([]byte, 6), nil, false); err == nil {
			break
		}
	}
	capb := make([]byte, 8)
	if err := k.command(ctx, "READ CAPACITY(10)", []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, capb, true); err != nil {
		return nil, err
	}
	k.Blocks = uint64(binary.BigEndian.Uint32(capb)) + 1
	k.BlockSize = int(binary.BigEndian.Uint32(capb[4:]))
	if k.BlockSize <= 0 || k.BlockSize > 65536 {
		return nil, fmt.Errorf("usbhost: block size %d", k.BlockSize)
	}
	return k, nil
}

// Read reads len(buf) bytes (whole blocks) at block lba.
func (k *Disk) Read(ctx context.Context, lba uint32, buf []byte) error {
	return k.rw(ctx, bot.OpRead10, lba, buf, true)
}

// Write writes buf (whole blocks) at block lba.
func (k *Disk) Write(ctx context.Context, lba uint32, buf []byte) error {
	return k.rw(ctx, bot.OpWrite10, lba, buf, false)
}

// maxCommand bounds one READ/WRITE(10): 64 KiB blocks of the 16-bit
// transfer length, and what 16 URBs of 64 KiB carry.
const maxCommand = 16 * frontend.MaxTransfer

func (k *Disk) rw(ctx context.Context, op byte, lba uint32, buf []byte, in bool) error {
	if len(buf)%k.BlockSize != 0 {
		return fmt.Errorf("usbhost: %d bytes is not whole %d-byte blocks", len(buf), k.BlockSize)
	}
	for len(buf) > 0 {
		n := min(len(buf), maxCommand)
		cdb := bot.RW10(op, lba, n/k.BlockSize)
		name := "WRITE(10)"
		if in {
			name = "READ(10)"
		}
		if err := k.command(ctx, name, cdb[:], buf[:n], in); err != nil {
			return err
		}
		buf, lba = buf[n:], lba+uint32(n/k.BlockSize)
	}
	return nil
}

// Sync asks the device to make its cache durable (SYNCHRONIZE CACHE(10)).
func (k *Disk) Sync(ctx context.Context) error {
	return k.command(ctx, "SYNCHRONIZE CACHE", []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, nil, false)
}

// command runs one BOT command: CBW, the data phase in 64 KiB URBs
// submitted together, CSW; a CSW status of 1 fetches the sense data.
func (k *Disk) command(ctx context.Context, name string, cdb, data []byte, in bool) error {
	d := k.D
	k.tag++
	if _, err := d.Transfer(ctx, usbif.TypeBulk, k.out, bot.NewCBW(k.tag, len(data), in, cdb)); err != nil {
		return fmt.Errorf("%s: CBW: %w", name, err)
	}
	var early []byte
	if len(data) > 0 {
		ep := k.out
		if in {
			ep = k.in
		}
		var err error
		if early, err = k.dataPhase(ctx, ep, data); err != nil {
			if errors.Is(err, ErrStall) {
				_ = d.ClearHalt(ctx, ep) // the CSW follows a stalled data phase (BOT §6.7)
			} else {
				return fmt.Errorf("%s: data: %w", name, err)
			}
		}
	}
	csw, n, err := early, len(early), error(nil)
	if csw == nil {
		csw = make([]byte, bot.CSWSize)
		n, err = d.Transfer(ctx, usbif.TypeBulk, k.in, csw)
		if errors.Is(err, ErrStall) {
			_ = d.ClearHalt(ctx, k.in)
			n, err = d.Transfer(ctx, usbif.TypeBulk, k.in, csw)
		}
	}
	status, cswErr := bot.CheckCSW(csw[:n], k.tag)
	if err != nil || cswErr != nil {
		return fmt.Errorf("%s: bad CSW (%d bytes, %v)", name, n, errors.Join(err, cswErr))
	}
	switch status {
	case 0:
		return nil
	case 1:
		if cdb[0] == 0x03 {
			return fmt.Errorf("%s: failed", name)
		}
		sense := make([]byte, 18)
		if err := k.command(ctx, "REQUEST SENSE", []byte{0x03, 0, 0, 0, 18, 0}, sense, true); err != nil {
			return err
		}
		return &CheckCondition{Op: name, Sense: [3]byte{sense[2] & 0x0f, sense[12], sense[13]}}
	}
	return fmt.Errorf("%s: phase error", name)
}

// dataPhase moves data in 64 KiB URBs, all in flight together. A short
// transfer ends the data phase (the device has no more, BOT §6.7.2):
// the URBs behind it are unlinked, and if the device's CSW already landed
// in one of them (13 bytes with the CSW signature), it is returned.
func (k *Disk) dataPhase(ctx context.Context, ep uint8, data []byte) (csw []byte, err error) {
	f := k.D.Host.F
	n := (len(data) + frontend.MaxTransfer - 1) / frontend.MaxTransfer
	done := make(chan *frontend.URB, n)
	urbs := make([]*frontend.URB, 0, n)
	for off := 0; off < len(data); off += frontend.MaxTransfer {
		u := k.D.URB(usbif.TypeBulk, ep, data[off:min(off+frontend.MaxTransfer, len(data))])
		u.Done = done
		u.Context = len(urbs)
		if err := f.Submit(u); err != nil {
			for _, v := range urbs {
				f.Unlink(v)
			}
			for range urbs {
				<-done
			}
			return nil, err
		}
		urbs = append(urbs, u)
	}
	short := -1
	var first error
	for range urbs {
		var u *frontend.URB
		select {
		case u = <-done:
		case <-ctx.Done():
			for _, v := range urbs {
				f.Unlink(v)
			}
			return nil, ctx.Err()
		}
		i := u.Context.(int)
		switch {
		case u.Status != usbif.StatusOK && short < 0:
			if first == nil {
				first = &StatusError{Op: fmt.Sprintf("endpoint 0x%02x", ep), Status: u.Status}
			}
			fallthrough
		case u.Actual < len(u.Buffer) && short < 0:
			short = i
			for _, v := range urbs[i+1:] {
				f.Unlink(v)
			}
		case short >= 0 && i > short && u.Status == usbif.StatusOK && bot.IsCSW(u.Buffer[:u.Actual]) && csw == nil:
			csw = append([]byte(nil), u.Buffer[:bot.CSWSize]...)
		}
	}
	return csw, first
}

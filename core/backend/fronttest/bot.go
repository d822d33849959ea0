package fronttest

import (
	"context"
	"fmt"

	"github.com/pvusb/pvusb/core/bot"
	"github.com/pvusb/pvusb/core/usbif"
)

// BOT drives a Bulk-Only mass-storage device on one port through a Front,
// the way Linux's usb-storage does: CBW, data in URBs of at most 60000
// bytes (16 pages from DataOffset), CSW.
type BOT struct {
	F    *Front
	Port uint8
	Addr uint8
	tag  uint32
}

// Enumerate does what the guest's hub driver does: GET_DESCRIPTOR at
// address 0, SET_ADDRESS, the configuration, SET_CONFIGURATION(1).
func (b *BOT) Enumerate(ctx context.Context, addr uint8) ([]byte, error) {
	get := usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: usbif.DescDevice << 8, Length: 64}
	rsp, desc, err := b.F.Control(ctx, b.Port, 0, get, nil)
	if err != nil || rsp.Status != 0 || len(desc) < 18 {
		return nil, fmt.Errorf("GET_DESCRIPTOR at address 0: %+v %v", rsp, err)
	}
	if rsp, _, err := b.F.Control(ctx, b.Port, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: uint16(addr)}, nil); err != nil || rsp.Status != 0 {
		return nil, fmt.Errorf("SET_ADDRESS(%d): %+v %v", addr, rsp, err)
	}
	b.Addr = addr
	get.Value, get.Length = usbif.DescConfiguration<<8, 255
	if rsp, _, err := b.F.Control(ctx, b.Port, addr, get, nil); err != nil || rsp.Status != 0 {
		return nil, fmt.Errorf("GET_DESCRIPTOR(CONFIGURATION): %+v %v", rsp, err)
	}
	if rsp, _, err := b.F.Control(ctx, b.Port, addr, usbif.SetupPacket{Request: usbif.ReqSetConfiguration, Value: 1}, nil); err != nil || rsp.Status != 0 {
		return nil, fmt.Errorf("SET_CONFIGURATION(1): %+v %v", rsp, err)
	}
	return desc, nil
}

// Command runs one SCSI command: n bytes of data phase (IN, or OUT from
// data); it returns the IN data and the CSW status.
func (b *BOT) Command(ctx context.Context, cdb []byte, in bool, data []byte, n int) ([]byte, byte, error) {
	b.tag++
	c := bot.NewCBW(b.tag, n, in, cdb)
	out := usbif.NewPipe(b.Port, b.Addr, 2, false, usbif.TypeBulk)
	inp := usbif.NewPipe(b.Port, b.Addr, 1, true, usbif.TypeBulk)
	if rsp, _, err := b.F.Do(ctx, out, nil, c, 0, 0); err != nil || rsp.Status != 0 {
		return nil, 0, fmt.Errorf("CBW: %+v %v", rsp, err)
	}
	var got []byte
	for moved := 0; moved < n; {
		chunk := min(n-moved, 60000)
		if in {
			rsp, d, err := b.F.Do(ctx, inp, nil, nil, chunk, 0)
			if err != nil || rsp.Status != 0 {
				return nil, 0, fmt.Errorf("data IN: %+v %v", rsp, err)
			}
			got = append(got, d...)
		} else if rsp, _, err := b.F.Do(ctx, out, nil, data[moved:moved+chunk], 0, 0); err != nil || rsp.Status != 0 {
			return nil, 0, fmt.Errorf("data OUT: %+v %v", rsp, err)
		}
		moved += chunk
	}
	rsp, csw, err := b.F.Do(ctx, inp, nil, nil, bot.CSWSize, 0)
	if err != nil || rsp.Status != 0 {
		return nil, 0, fmt.Errorf("CSW: %+v % x %v", rsp, csw, err)
	}
	status, err := bot.CheckCSW(csw, b.tag)
	return got, status, err
}

// Blocks of 512 bytes per READ/WRITE command: what Linux usually sends.
const blocksPerCommand = 120

// Write writes data (a multiple of 512 bytes) at lba with WRITE(10).
func (b *BOT) Write(ctx context.Context, lba uint32, data []byte) error {
	for off := 0; off < len(data); off += blocksPerCommand * 512 {
		n := min(blocksPerCommand*512, len(data)-off)
		cdb := bot.RW10(bot.OpWrite10, lba+uint32(off/512), n/512)
		if _, st, err := b.Command(ctx, cdb[:], false, data[off:off+n], n); err != nil || st != 0 {
			return fmt.Errorf("WRITE(10) at %d: status %d %v", lba+uint32(off/512), st, err)
		}
	}
	return nil
}

// Read reads n bytes at lba with READ(10), handing each chunk to sink.
func (b *BOT) Read(ctx context.Context, lba uint32, n int, sink func([]byte)) error {
	for off := 0; off < n; off += blocksPerCommand * 512 {
		l := min(blocksPerCommand*512, n-off)
		cdb := bot.RW10(bot.OpRead10, lba+uint32(off/512), l/512)
		d, st, err := b.Command(ctx, cdb[:], true, nil, l)
		if err != nil || st != 0 {
			return fmt.Errorf("READ(10) at %d: status %d %v", lba+uint32(off/512), st, err)
		}
		sink(d)
	}
	return nil
}

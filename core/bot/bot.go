// Package bot is the wire format of USB mass storage Bulk-Only Transport
// (USB MSC BOT 1.0 §5): the 31-byte Command Block Wrapper a host sends
// before each SCSI command and the 13-byte Command Status Wrapper the
// device ends it with. The emulated disk (stub/msc) parses them; every
// host side here (usbhost, usbip, stub/libusb, msc.Direct, fronttest)
// builds them with PutCBW and checks the answer with CheckCSW.
package bot

import (
	"encoding/binary"
	"fmt"
)

// Sizes and signatures (BOT §5.1, §5.2).
const (
	CBWSize      = 31
	CSWSize      = 13
	CBWSignature = 0x43425355 // "USBC"
	CSWSignature = 0x53425355 // "USBS"
)

// SCSI operation codes of the block commands the hosts send.
const (
	OpRead10  = 0x28
	OpWrite10 = 0x2a
)

// PutCBW writes into b (at least CBWSize bytes) the CBW for cdb (at most
// 16 bytes) with tag, a data phase of dataLen bytes in the direction in
// says, LUN 0.
func PutCBW(b []byte, tag uint32, dataLen int, in bool, cdb []byte) {
	b = b[:CBWSize]
	clear(b)
	binary.LittleEndian.PutUint32(b, CBWSignature)
	binary.LittleEndian.PutUint32(b[4:], tag)
	binary.LittleEndian.PutUint32(b[8:], uint32(dataLen))
	if in {
		b[12] = 0x80
	}
	b[14] = byte(len(cdb))
	copy(b[15:], cdb)
}

// NewCBW is PutCBW into a new buffer.
func NewCBW(tag uint32, dataLen int, in bool, cdb []byte) []byte {
	b := make([]byte, CBWSize)
	PutCBW(b, tag, dataLen, in, cdb)
	return b
}

// RW10 is the CDB of READ(10) or WRITE(10) (op) of blocks blocks at lba.
func RW10(op byte, lba uint32, blocks int) [10]byte {
	c := [10]byte{0: op}
	binary.BigEndian.PutUint32(c[2:], lba)
	binary.BigEndian.PutUint16(c[7:], uint16(blocks))
	return c
}

// IsCSW says whether b has a CSW's size and signature.
func IsCSW(b []byte) bool {
	return len(b) == CSWSize && binary.LittleEndian.Uint32(b) == CSWSignature
}

// CheckCSW checks that b is the CSW answering the CBW with tag and
// returns its status: 0 passed, 1 failed (ask REQUEST SENSE), 2 phase
// error (reset recovery).
func CheckCSW(b []byte, tag uint32) (byte, error) {
	if !IsCSW(b) {
		return 0, fmt.Errorf("bot: not a CSW: % x", b)
	}
	if t := binary.LittleEndian.Uint32(b[4:]); t != tag {
		return 0, fmt.Errorf("bot: CSW for tag %d, the command's is %d", t, tag)
	}
	return b[12], nil
}

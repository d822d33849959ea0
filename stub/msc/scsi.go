// Package msc is an emulated USB mass-storage device: Bulk-Only Transport
// (USB MSC BOT 1.0) carrying the SCSI transparent command set (SPC/SBC),
// backed by an image file that is durable after SYNCHRONIZE CACHE and on
// release. Good enough for Linux's usb-storage and sd drivers.
package msc

import (
	"encoding/binary"
	"os"
)

// BlockSize is the logical block size the disk reports.
const BlockSize = 512

// SCSI operation codes served.
const (
	opTestUnitReady    = 0x00
	opRequestSense     = 0x03
	opInquiry          = 0x12
	opModeSense6       = 0x1a
	opStartStopUnit    = 0x1b
	opPreventAllow     = 0x1e
	opReadCapacity10   = 0x25
	opRead10           = 0x28
	opWrite10          = 0x2a
	opVerify10         = 0x2f
	opSyncCache10      = 0x35
	opModeSense10      = 0x5a
	opRead16           = 0x88
	opWrite16          = 0x8a
	opSyncCache16      = 0x91
	opServiceAction16  = 0x9e // READ CAPACITY(16) is service action 0x10
	opReportLuns       = 0xa0
	saReadCapacity16   = 0x10
	statusGood         = 0x00
	statusCheck        = 0x01 // the CSW's "command failed"; SCSI CHECK CONDITION
	statusPhaseError   = 0x02
	senseNoSense       = 0x00
	senseNotReady      = 0x02
	senseMediumError   = 0x03
	senseIllegal       = 0x05
	senseDataProtect   = 0x07
	ascInvalidOpcode   = 0x20
	ascLBAOutOfRange   = 0x21
	ascInvalidField    = 0x24
	ascWriteProtected  = 0x27
	ascMediumNotPresnt = 0x3a
	ascUnrecoveredRead = 0x11
	ascWriteError      = 0x0c
)

// cdbLength is the CDB length of each command served (0: not served).
var cdbLength = [256]int{opTestUnitReady: 6, opRequestSense: 6, opInquiry: 6, opModeSense6: 6, opStartStopUnit: 6,
	opPreventAllow: 6, opReadCapacity10: 10, opRead10: 10, opWrite10: 10, opVerify10: 10, opSyncCache10: 10,
	opModeSense10: 10, opRead16: 16, opWrite16: 16, opSyncCache16: 16, opServiceAction16: 16, opReportLuns: 12}

type dir int

const (
	dirNone dir = iota
	dirIn
	dirOut
)

// plan is what one SCSI command will do: its data phase and outcome.
type plan struct {
	dir    dir
	length int    // bytes the device will move (Di or Do)
	fixed  []byte // IN data held in scratch, or nil to stream the file
	off    int64  // file offset of a READ/WRITE stream
	status byte   // statusGood or statusCheck
	sync   bool   // SYNCHRONIZE CACHE: fsync when the status is built
}

type sense struct{ key, asc, ascq byte }

// Disk is the SCSI target: one LUN over an image file.
type Disk struct {
	f        *os.File
	blocks   uint64
	readOnly bool
	ejected  bool
	serial   string
	last     sense
	scratch  [512]byte
}

func (d *Disk) fail(key, asc byte) plan {
	d.last = sense{key, asc, 0}
	return plan{status: statusCheck}
}

// in returns n bytes of scratch as the IN data, truncated to the CDB's
// allocation length.
func (d *Disk) in(n, alloc int) plan {
	n = min(n, alloc)
	return plan{dir: dirIn, length: n, fixed: d.scratch[:n]}
}

// plan decodes a CDB. Anything malformed is a CHECK CONDITION with the
// sense data that says why, never a panic.
func (d *Disk) plan(cdb []byte) plan {
	if len(cdb) == 0 {
		return d.fail(senseIllegal, ascInvalidOpcode)
	}
	op := cdb[0]
	if op != opRequestSense {
		d.last = sense{}
	}
	need := cdbLength[op]
	if need == 0 {
		return d.fail(senseIllegal, ascInvalidOpcode)
	}
	if len(cdb) < need {
		return d.fail(senseIllegal, ascInvalidField)
	}
	be := binary.BigEndian
	clear(d.scratch[:])
	switch op {
	case opTestUnitReady:
		if d.ejected {
			return d.fail(senseNotReady, ascMediumNotPresnt)
		}
		return plan{}
	case opRequestSense:
		s := d.last
		d.last = sense{}
		b := d.scratch[:18]
		b[0], b[2], b[7], b[12], b[13] = 0x70, s.key, 10, s.asc, s.ascq // fixed format, current error
		return d.in(18, int(cdb[4]))
	case opInquiry:
		alloc := int(be.Uint16(cdb[3:]))
		if cdb[1]&0x02 != 0 { // CmdDt: obsolete
			return d.fail(senseIllegal, ascInvalidField)
		}
		if cdb[1]&0x01 != 0 { // EVPD
			switch cdb[2] {
			case 0x00:
				copy(d.scratch[:], []byte{0, 0x00, 0, 2, 0x00, 0x80})
				return d.in(6, alloc)
			case 0x80:
				n := copy(d.scratch[4:], d.serial)
				d.scratch[1], d.scratch[3] = 0x80, byte(n)
				return d.in(4+n, alloc)
			}
			return d.fail(senseIllegal, ascInvalidField)
		}
		if cdb[2] != 0 {
			return d.fail(senseIllegal, ascInvalidField)
		}
		b := d.scratch[:36]
		b[0], b[1], b[2], b[3], b[4] = 0x00, 0x80, 0x04, 0x02, 31 // disk, removable, SPC-2, format 2
		copy(b[8:16], "pvusb   ")
		copy(b[16:32], "emulated disk   ")
		copy(b[32:36], "1.0 ")
		return d.in(36, alloc)
	case opReadCapacity10:
		last := d.blocks - 1
		if d.blocks == 0 {
			last = 0
		}
		if last > 0xffffffff {
			last = 0xffffffff // READ CAPACITY(16) needed
		}
		be.PutUint32(d.scratch[0:], uint32(last))
		be.PutUint32(d.scratch[4:], BlockSize)
		return d.in(8, 8)
	case opServiceAction16:
		if cdb[1]&0x1f != saReadCapacity16 {
			return d.fail(senseIllegal, ascInvalidOpcode)
		}
		be.PutUint64(d.scratch[0:], max(d.blocks, 1)-1)
		be.PutUint32(d.scratch[8:], BlockSize)
		return d.in(32, int(be.Uint32(cdb[10:])))
	case opRead10, opWrite10, opVerify10:
		return d.rw(op, uint64(be.Uint32(cdb[2:])), uint64(be.Uint16(cdb[7:])))
	case opRead16, opWrite16:
		return d.rw(op, be.Uint64(cdb[2:]), uint64(be.Uint32(cdb[10:])))
	case opModeSense6, opModeSense10:
		return d.modeSense(op, cdb)
	case opStartStopUnit:
		if cdb[4]&0x02 != 0 { // LoEj: start=0 ejects, start=1 loads
			d.ejected = cdb[4]&0x01 == 0
		}
		return plan{}
	case opPreventAllow:
		return plan{}
	case opSyncCache10, opSyncCache16:
		return plan{sync: true}
	case opReportLuns:
		alloc := int(be.Uint32(cdb[6:]))
		if alloc < 16 {
			return d.fail(senseIllegal, ascInvalidField)
		}
		be.PutUint32(d.scratch[0:], 8) // one LUN: 0
		return d.in(16, alloc)
	}
	return d.fail(senseIllegal, ascInvalidOpcode)
}

// rw plans READ, WRITE or VERIFY of count blocks at lba.
func (d *Disk) rw(op byte, lba, count uint64) plan {
	if d.ejected {
		return d.fail(senseNotReady, ascMediumNotPresnt)
	}
	if lba > d.blocks || count > d.blocks-lba {
		return d.fail(senseIllegal, ascLBAOutOfRange)
	}
	if count > 1<<20 { // 512 MiB in one command: more than any host sends; bounds the plan
		return d.fail(senseIllegal, ascInvalidField)
	}
	off, n := int64(lba*BlockSize), int(count*BlockSize)
	switch op {
	case opRead10, opRead16:
		return plan{dir: dirIn, length: n, off: off}
	case opWrite10, opWrite16:
		if d.readOnly {
			return d.fail(senseDataProtect, ascWriteProtected)
		}
		return plan{dir: dirOut, length: n, off: off}
	}
	return plan{} // VERIFY without BYTCHK: the medium is always fine
}

// modeSense returns the mode parameter header (write protection) and the
// caching page (write cache off: writes reach the file at once).
func (d *Disk) modeSense(op byte, cdb []byte) plan {
	page := cdb[2] & 0x3f
	if page != 0x3f && page != 0x08 {
		return d.fail(senseIllegal, ascInvalidField)
	}
	hdr := 4
	alloc := int(cdb[4])
	if op == opModeSense10 {
		hdr, alloc = 8, int(binary.BigEndian.Uint16(cdb[7:]))
	}
	b := d.scratch[:]
	caching := b[hdr : hdr+20]
	caching[0], caching[1] = 0x08, 18
	n := hdr + 20
	wp := byte(0)
	if d.readOnly {
		wp = 0x80
	}
	if op == opModeSense6 {
		b[0], b[2] = byte(n-1), wp
	} else {
		binary.BigEndian.PutUint16(b[0:], uint16(n-2))
		b[3] = wp
	}
	return d.in(n, alloc)
}

// readAt fills p from the image at off; a failure sets MEDIUM ERROR.
func (d *Disk) readAt(p []byte, off int64) bool {
	if _, err := d.f.ReadAt(p, off); err != nil {
		d.last = sense{senseMediumError, ascUnrecoveredRead, 0}
		return false
	}
	return true
}

// writeAt stores p at off; a failure sets MEDIUM ERROR.
func (d *Disk) writeAt(p []byte, off int64) bool {
	if _, err := d.f.WriteAt(p, off); err != nil {
		d.last = sense{senseMediumError, ascWriteError, 0}
		return false
	}
	return true
}

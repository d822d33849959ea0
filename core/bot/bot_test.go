package bot

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

// The CBW of READ(10) of 8 blocks at LBA 0x1234, tag 7, byte for byte
// (BOT §5.1: little-endian header, the CDB big-endian).
func TestCBWByteForByte(t *testing.T) {
	cdb := RW10(OpRead10, 0x1234, 8)
	got := NewCBW(7, 4096, true, cdb[:])
	want, _ := hex.DecodeString(strings.ReplaceAll("55534243 07000000 00100000 80 00 0a 28000000123400000800 000000000000", " ", ""))
	if !bytes.Equal(got, want) {
		t.Fatalf("\n got % x\nwant % x", got, want)
	}
	// Reused buffers are cleared: an OUT CBW after an IN one.
	cdb = RW10(OpWrite10, 1, 1)
	PutCBW(got, 8, 512, false, cdb[:6])
	if got[12] != 0 || got[14] != 6 || got[15] != OpWrite10 || got[21] != 0 || got[22] != 0 {
		t.Fatalf("reused CBW % x", got)
	}
}

func TestCheckCSW(t *testing.T) {
	csw := []byte{0x55, 0x53, 0x42, 0x53, 9, 0, 0, 0, 0, 0, 0, 0, 1}
	if st, err := CheckCSW(csw, 9); err != nil || st != 1 {
		t.Fatalf("status %d %v", st, err)
	}
	if _, err := CheckCSW(csw, 10); err == nil {
		t.Error("a CSW for another tag accepted")
	}
	if _, err := CheckCSW(csw[:12], 9); err == nil {
		t.Error("a short CSW accepted")
	}
	bad := append([]byte(nil), csw...)
	bad[3] = 0x43 // "USBC": a CBW, not a CSW
	if IsCSW(bad) {
		t.Error("a CBW signature taken for a CSW")
	}
}

package ring

import (
	"encoding/binary"
	"testing"
)

// FuzzBackRingHostilePage feeds a back ring a page whose indices and slots
// a hostile front rewrites between polls. The back must never panic, never
// take more than the ring size per pass, never consume beyond the free
// response slots, and once latched stay latched.
func FuzzBackRingHostilePage(f *testing.F) {
	f.Add(uint32(0), []byte{1, 0, 0, 0, 5, 0, 0, 0, 17, 0, 0, 0})
	f.Add(uint32(1<<32-2), []byte{16, 0, 0, 0, 255, 255, 255, 255, 3, 0, 0, 0})
	f.Add(uint32(7), []byte{0, 0, 0, 128, 9, 9, 9, 9})
	f.Fuzz(func(t *testing.T, start uint32, script []byte) {
		page := make([]byte, PageSize)
		InitShared(page, start)
		b := AttachBack[urbReq, urbRsp](page, start)
		latched := false
		var q urbReq
		var r urbRsp
		for len(script) >= 4 {
			v := binary.LittleEndian.Uint32(script)
			script = script[4:]
			// Hostile write: a new req_prod relative to start, and garbage in a slot.
			store(page, OffReqProd, start+v%64-8) // behind, sane, and beyond the ring
			page[HeaderSize+int(v%(PageSize-HeaderSize))] = byte(v >> 8)
			n, err := b.Poll()
			if latched && err == nil {
				t.Fatal("latched error cleared")
			}
			latched = err != nil
			if n > b.Size() {
				t.Fatalf("poll allows %d > ring size", n)
			}
			took := uint32(0)
			for b.NextRequest(&q) {
				took++
				if b.Pending() > b.Size() {
					t.Fatalf("consumed beyond the free response slots: pending %d", b.Pending())
				}
			}
			if took != n {
				t.Fatalf("took %d, poll said %d", took, n)
			}
			// Answer some of what is pending, as a backend would.
			for i := uint32(0); i < (v>>16)%4 && b.Pending() > 0; i++ {
				if err := b.PutResponse(&r); err != nil {
					t.Fatal(err)
				}
			}
			b.PushResponses()
			b.FinalCheckForRequests()
		}
	})
}

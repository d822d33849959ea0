package ringview

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzAnalyze explains arbitrary pages of either kind: never a panic,
// never more requests listed than the ring holds, and the text writer
// copes with whatever the analysis found.
func FuzzAnalyze(f *testing.F) {
	// Inputs stay small (cheap to mutate): a 64-byte header and up to two
	// slots' worth of bytes tiled over the rest of the page. The golden
	// pages seed it with their headers and first slots.
	pages, _ := filepath.Glob("../../testdata/rings/*.bin")
	for _, p := range pages {
		if b, err := os.ReadFile(p); err == nil && len(b) == 4096 {
			f.Add(b[:64], b[64:64+296], false)
		}
	}
	f.Fuzz(func(t *testing.T, header, slots []byte, conn bool) {
		if len(header) != 64 || len(slots) == 0 || len(slots) > 296 {
			if _, err := Analyze(header, KindURB, 8); err == nil {
				t.Fatal("accepted a page of the wrong size")
			}
			return
		}
		page := make([]byte, 4096)
		copy(page, header)
		for off := 64; off < len(page); off += len(slots) {
			copy(page[off:], slots)
		}
		kind := KindURB
		if conn {
			kind = KindConn
		}
		d, err := Analyze(page, kind, 8)
		if err != nil {
			t.Fatal(err)
		}
		if uint32(len(d.Requests)) > d.Size || uint32(len(d.Responses)) > d.Size {
			t.Fatalf("%d requests, %d responses listed in a ring of %d", len(d.Requests), len(d.Responses), d.Size)
		}
		if err := d.WriteText(io.Discard, "fuzz"); err != nil {
			t.Fatal(err)
		}
		Guess(page)
	})
}

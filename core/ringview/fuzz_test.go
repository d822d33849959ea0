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
	pages, _ := filepath.Glob("../../testdata/rings/*.bin")
	for _, p := range pages {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b, false)
		}
	}
	f.Fuzz(func(t *testing.T, page []byte, conn bool) {
		if len(page) != 4096 {
			if _, err := Analyze(page, KindURB, 8); err == nil {
				t.Fatal("accepted a page of the wrong size")
			}
			return
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

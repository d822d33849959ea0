package usbif

import "testing"

// BenchmarkDecodeValidate is the backend's per-URB work on a copied
// request: decode the 148 bytes, then validate. Reference: a plain copy
// of the same 148 bytes, in the same run.
func BenchmarkDecodeValidate(b *testing.B) {
	var r URBRequest
	r.ID, r.NrBufferSegs = 5, 16
	r.Pipe = NewPipe(1, 2, 1, true, TypeBulk)
	for i := range r.Seg {
		r.Seg[i] = Segment{Gref: uint32(i), Length: 4096}
	}
	var wire [URBRequestSize]byte
	r.Encode(&wire)
	b.Run("decode+validate", func(b *testing.B) {
		b.ReportAllocs()
		var d URBRequest
		for b.Loop() {
			d.Decode(&wire)
			if Validate(&d, 8) != nil {
				b.Fatal("invalid")
			}
		}
	})
	b.Run("reference-copy148", func(b *testing.B) {
		b.ReportAllocs()
		var dst [URBRequestSize]byte
		for b.Loop() {
			dst = wire
		}
		_ = dst
	})
}

package ring

import "testing"

// BenchmarkURBRoundTrip pushes and consumes URB requests and responses
// through one ring in one goroutine: the ring's own cost per URB, with no
// event channel. Reference: copying the same 148+16 bytes twice.
func BenchmarkURBRoundTrip(b *testing.B) {
	for _, batch := range []int{1, 16} {
		b.Run("batch="+string(rune('0'+batch/10))+string(rune('0'+batch%10)), func(b *testing.B) {
			_, f, bk := newPair(0)
			var q urbReq
			var r urbRsp
			b.ReportAllocs()
			for b.Loop() {
				for range batch {
					f.PutRequest(&q)
				}
				f.PushRequests()
				bk.Poll()
				for bk.NextRequest(&q) {
					bk.PutResponse(&r)
				}
				bk.PushResponses()
				f.Poll()
				for f.NextResponse(&r) {
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "urbs/s")
		})
	}
	b.Run("reference-copy", func(b *testing.B) {
		page := make([]byte, PageSize)
		var q urbReq
		var r urbRsp
		b.ReportAllocs()
		for b.Loop() {
			copy(page[64:], q[:])
			copy(q[:], page[64:])
			copy(page[64:], r[:])
			copy(r[:], page[64:])
		}
	})
}

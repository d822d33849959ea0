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
	// The same bytes moved through the same slots by plain copies: what
	// the ring costs over the memory traffic it cannot avoid.
	b.Run("reference-copy", func(b *testing.B) {
		page := make([]byte, PageSize)
		var q urbReq
		var r urbRsp
		l := NewLayout(len(q))
		i := uint32(0)
		b.ReportAllocs()
		for b.Loop() {
			off := l.SlotOffset(i)
			copy(page[off:], q[:])
			copy(q[:], page[off:])
			copy(page[off:], r[:])
			copy(r[:], page[off:])
			q[0]++
			i++
		}
		sink = q[0] + r[0]
	})
}

var sink byte

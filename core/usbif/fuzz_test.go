package usbif

import (
	"errors"
	"testing"
)

// FuzzDecodeValidate decodes any 148 bytes and validates them. It must
// never panic; an accepted request must really be within bounds (so the
// backend can trust what Validate passes); a rejected one must name a
// sentinel and a ring status; and encode(decode(b)) must give b back.
func FuzzDecodeValidate(f *testing.F) {
	var seed URBRequest
	seed.ID, seed.NrBufferSegs, seed.Pipe = 3, 1, NewPipe(1, 0, 0, true, TypeCtrl)
	seed.SetSetup(SetupPacket{0x80, ReqGetDescriptor, DescDevice << 8, 0, 64})
	seed.Seg[0] = Segment{Gref: 0x12345, Offset: 0x100, Length: 64}
	var b [URBRequestSize]byte
	seed.Encode(&b)
	f.Add(b[:], uint8(8))
	iso := URBRequest{Pipe: NewPipe(2, 4, 1, true, TypeIsoc), NrBufferSegs: 2}
	iso.SetIsoc(1, 0, 4, 1)
	iso.Encode(&b)
	f.Add(b[:], uint8(31))
	f.Fuzz(func(t *testing.T, in []byte, ports uint8) {
		if len(in) < URBRequestSize {
			return
		}
		wire := (*[URBRequestSize]byte)(in[:URBRequestSize])
		numPorts := int(ports%MaxPorts) + 1
		var r URBRequest
		r.Decode(wire)
		var back [URBRequestSize]byte
		r.Encode(&back)
		if back != *wire {
			t.Fatalf("encode(decode(b)) != b")
		}
		err := Validate(&r, numPorts)
		_ = Anomalies(&r, numPorts)
		_ = r.Setup().String()
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) || re.Status() >= 0 || re.Err == nil {
				t.Fatalf("rejection without a sentinel and status: %#v", err)
			}
			return
		}
		if r.Pipe.Unlink() {
			if r.Pipe.Device() == 0 && (r.Pipe.Port() == 0 || int(r.Pipe.Port()) > numPorts) {
				t.Fatal("accepted an unlink to a bad port")
			}
			return
		}
		n := r.UsedSegments()
		if n > MaxSegments {
			t.Fatalf("accepted %d segments", n)
		}
		for i := 0; i < n; i++ {
			if r.Seg[i].End() > PageSize {
				t.Fatalf("accepted segment %d ending at %d", i, r.Seg[i].End())
			}
		}
		if r.Pipe.Type() == TypeCtrl && int(r.Setup().Length) > r.DataLength() {
			t.Fatal("accepted control wLength beyond the segments")
		}
		if r.DataLength() > MaxTransfer {
			t.Fatal("data beyond 64 KiB")
		}
	})
}

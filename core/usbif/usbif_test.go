package usbif

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGoldenSamples encodes the sample messages of usbif-protocol.md §12.
func TestGoldenSamples(t *testing.T) {
	var r URBRequest
	r.ID, r.NrBufferSegs, r.BufferLength = 3, 1, 64
	r.Pipe = NewPipe(1, 0, 0, true, TypeCtrl)
	r.SetSetup(SetupPacket{RequestType: 0x80, Request: ReqGetDescriptor, Value: DescDevice << 8, Length: 64})
	r.Seg[0] = Segment{Gref: 0x12345, Offset: 0x100, Length: 64}
	var b [URBRequestSize]byte
	r.Encode(&b)
	if want := unhex(t, "03 00 01 00 81 00 00 80 00 00 40 00 80 06 00 01 00 00 40 00 45 23 01 00 00 01 40 00"); string(b[:28]) != string(want) {
		t.Errorf("GET_DESCRIPTOR sample:\n got % x\nwant % x", b[:28], want)
	}
	if got := r.Setup().String(); got != "GET_DESCRIPTOR(DEVICE) wLength=64" {
		t.Errorf("setup string %q", got)
	}

	r = URBRequest{ID: 4, Pipe: NewPipe(1, 0, 0, false, TypeCtrl)}
	r.SetSetup(SetupPacket{Request: ReqSetAddress, Value: 2})
	r.Encode(&b)
	if want := unhex(t, "04 00 00 00 01 00 00 80 00 00 00 00 00 05 02 00 00 00 00 00"); string(b[:20]) != string(want) {
		t.Errorf("SET_ADDRESS sample:\n got % x\nwant % x", b[:20], want)
	}

	var rb [URBResponseSize]byte
	(&URBResponse{ID: 3, ActualLength: 18}).Encode(&rb)
	if want := unhex(t, "03 00 00 00 00 00 00 00 12 00 00 00 00 00 00 00"); string(rb[:]) != string(want) {
		t.Errorf("response sample % x", rb)
	}
	var cb [ConnResponseSize]byte
	(&ConnResponse{ID: 5, Port: 1, Speed: SpeedHigh}).Encode(&cb)
	if want := unhex(t, "05 00 01 03"); string(cb[:]) != string(want) {
		t.Errorf("conn sample % x", cb)
	}
	var cr ConnResponse
	cr.Decode(&cb)
	if cr != (ConnResponse{ID: 5, Port: 1, Speed: SpeedHigh}) {
		t.Errorf("conn decode %+v", cr)
	}
}

func TestPipeExamples(t *testing.T) {
	for _, tc := range []struct {
		pipe Pipe
		want Pipe
	}{
		{NewPipe(1, 0, 0, true, TypeCtrl), 0x80000081},
		{NewPipe(1, 0, 0, false, TypeCtrl), 0x80000001},
		{NewPipe(1, 2, 1, true, TypeBulk), 0xC0008281},
		{NewPipe(1, 2, 1, true, TypeBulk).WithUnlink(), 0xC00082A1},
		{NewPipe(2, 3, 2, false, TypeIntr), 0x40010302},
	} {
		if tc.pipe != tc.want {
			t.Errorf("pipe 0x%08x, want 0x%08x", uint32(tc.pipe), uint32(tc.want))
		}
	}
	p := Pipe(0xC00082A1)
	if p.Port() != 1 || !p.Unlink() || !p.In() || p.Device() != 2 || p.Endpoint() != 1 || p.Type() != TypeBulk || p.EndpointAddress() != 0x81 {
		t.Errorf("accessors of 0x%08x wrong", uint32(p))
	}
	if p.WithPort(7).Port() != 7 || p.WithPort(7).Device() != 2 {
		t.Error("WithPort")
	}
	if Pipe(0x00000040).Reserved() == 0 || Pipe(0x00080000).Reserved() == 0 || Pipe(0xC007FFBF).Reserved() != 0 {
		t.Error("reserved mask")
	}
}

func TestSetupStrings(t *testing.T) {
	for _, tc := range []struct {
		s    SetupPacket
		want string
	}{
		{SetupPacket{0x80, ReqGetDescriptor, DescConfiguration << 8, 0, 9}, "GET_DESCRIPTOR(CONFIGURATION) wLength=9"},
		{SetupPacket{0x80, ReqGetDescriptor, DescString<<8 | 2, 0x409, 255}, "GET_DESCRIPTOR(STRING 2, lang 0x0409) wLength=255"},
		{SetupPacket{0x81, ReqGetDescriptor, DescReport << 8, 0, 63}, "GET_DESCRIPTOR(REPORT) interface=0 wLength=63"},
		{SetupPacket{0x00, ReqSetConfiguration, 1, 0, 0}, "SET_CONFIGURATION(1)"},
		{SetupPacket{0x01, ReqSetInterface, 1, 2, 0}, "SET_INTERFACE(interface 2, alt 1)"},
		{SetupPacket{0x02, ReqClearFeature, 0, 0x81, 0}, "CLEAR_FEATURE(ENDPOINT_HALT) ep=0x81"},
		{SetupPacket{0xa1, 0xfe, 0, 0, 1}, "CLASS IN interface req=0xfe wValue=0x0000 wIndex=0x0000 wLength=1"},
		{SetupPacket{0x21, 0x05, 0, 0, 0}, "CLASS OUT interface req=0x05 wValue=0x0000 wIndex=0x0000 wLength=0"},
		{SetupPacket{0x40, 0x01, 0x10, 0, 0}, "VENDOR OUT device req=0x01 wValue=0x0010 wIndex=0x0000 wLength=0"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.s, got, tc.want)
		}
	}
	// A class request that shares SET_ADDRESS's number is not SET_ADDRESS (§11 #5).
	if (SetupPacket{RequestType: 0x21, Request: ReqSetAddress}).Is(ReqSetAddress, RecipientDevice) {
		t.Error("class request taken for SET_ADDRESS")
	}
	if !(SetupPacket{Request: ReqSetAddress}).Is(ReqSetAddress, RecipientDevice) {
		t.Error("SET_ADDRESS not recognised")
	}
}

func TestStatusAndSpeedNames(t *testing.T) {
	if StatusShutdown.String() != "SHUTDOWN" || Status(-5).String() != "errno-5" || !StatusStall.Known() || StatusNoEnt.Known() {
		t.Error("status names")
	}
	if SpeedHigh.String() != "high" || Speed(4).Valid() || !SpeedNone.Valid() || Speed(9).String() != "speed9" {
		t.Error("speed names")
	}
}

func ctrlRequest(port, dev uint8, in bool, s SetupPacket, segs ...Segment) URBRequest {
	r := URBRequest{ID: 1, Pipe: NewPipe(port, dev, 0, in, TypeCtrl), NrBufferSegs: uint16(len(segs))}
	r.SetSetup(s)
	copy(r.Seg[:], segs)
	return r
}

func TestValidate(t *testing.T) {
	getDesc := SetupPacket{0x80, ReqGetDescriptor, DescDevice << 8, 0, 64}
	okCtrl := ctrlRequest(1, 0, true, getDesc, Segment{1, 0, 64})
	bulk := URBRequest{ID: 2, Pipe: NewPipe(3, 5, 1, true, TypeBulk), NrBufferSegs: 16}
	for i := range bulk.Seg {
		bulk.Seg[i] = Segment{Gref: uint32(i), Length: 4096}
	}
	iso := URBRequest{ID: 3, Pipe: NewPipe(1, 5, 2, true, TypeIsoc), NrBufferSegs: 1}
	iso.Seg[0] = Segment{Gref: 1, Length: 3 * 192}
	iso.Seg[1] = Segment{Gref: 2, Offset: 100, Length: 48}
	iso.SetIsoc(1, 0, 3, 1)

	mut := func(r URBRequest, f func(*URBRequest)) URBRequest { f(&r); return r }
	for _, tc := range []struct {
		name   string
		r      URBRequest
		want   error
		status Status
	}{
		{"control ok", okCtrl, nil, 0},
		{"bulk 64KiB ok, buffer_length 0", bulk, nil, 0},
		{"iso ok", iso, nil, 0},
		{"port 0 at address 0", ctrlRequest(0, 0, true, getDesc, Segment{1, 0, 64}), ErrBadPort, StatusNoDev},
		{"port 31 of 8", ctrlRequest(31, 0, true, getDesc, Segment{1, 0, 64}), ErrBadPort, StatusNoDev},
		{"port above num-ports", ctrlRequest(9, 0, true, getDesc, Segment{1, 0, 64}), ErrBadPort, StatusNoDev},
		{"port ignored at address 5", mut(bulk, func(r *URBRequest) { r.Pipe = r.Pipe.WithPort(0) }), nil, 0},
		{"17 segments", mut(bulk, func(r *URBRequest) { r.NrBufferSegs = 17 }), ErrTooManySegments, StatusShutdown},
		{"65535 segments", mut(bulk, func(r *URBRequest) { r.NrBufferSegs = 0xffff }), ErrTooManySegments, StatusShutdown},
		{"iso 1+16 segments", mut(iso, func(r *URBRequest) { r.SetIsoc(1, 0, 3, 16) }), ErrTooManySegments, StatusShutdown},
		{"iso u16 wrap", mut(iso, func(r *URBRequest) { r.NrBufferSegs = 0xffff; r.SetIsoc(1, 0, 3, 2) }), ErrTooManySegments, StatusShutdown},
		{"segment crosses page", mut(bulk, func(r *URBRequest) { r.Seg[7].Offset = 1 }), ErrSegmentCrossesPage, StatusShutdown},
		{"control wLength > segments", ctrlRequest(1, 0, true, getDesc, Segment{1, 0, 8}), ErrControlLength, StatusShutdown},
		{"control without data stage", ctrlRequest(1, 0, false, SetupPacket{Request: ReqSetAddress, Value: 3}), nil, 0},
		{"iso without packets", mut(iso, func(r *URBRequest) { r.SetIsoc(1, 0, 0, 1) }), ErrIsoDescriptors, StatusShutdown},
		{"iso descriptors short", mut(iso, func(r *URBRequest) { r.SetIsoc(1, 0, 4, 1) }), ErrIsoDescriptors, StatusShutdown},
		{"stale fields of an unlink ignored", URBRequest{Pipe: NewPipe(1, 5, 1, true, TypeBulk).WithUnlink(), NrBufferSegs: 999, Seg: [16]Segment{{Offset: 9999, Length: 9999}}}, nil, 0},
		{"unlink at address 0 on port 0", URBRequest{Pipe: NewPipe(0, 0, 0, true, TypeCtrl).WithUnlink()}, ErrBadPort, StatusNoDev},
		{"stale iso count on bulk ignored", mut(bulk, func(r *URBRequest) { r.SetIsoc(0, 0, 0, 0xffff) }), nil, 0},
		{"reserved bits ignored", mut(okCtrl, func(r *URBRequest) { r.Pipe |= PipeReservedMask }), nil, 0},
	} {
		err := Validate(&tc.r, 8)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
			continue
		}
		var re *RequestError
		if err != nil && (!errors.As(err, &re) || re.Status() != tc.status || re.ID != tc.r.ID) {
			t.Errorf("%s: error %#v, want status %v", tc.name, err, tc.status)
		}
	}
}

func TestAnomaliesListsEverything(t *testing.T) {
	r := URBRequest{ID: 9, Pipe: NewPipe(0, 0, 0, true, TypeCtrl) | 0x40, NrBufferSegs: 2, TransferFlags: 0x8001, BufferLength: 10}
	r.SetSetup(SetupPacket{0x80, ReqGetDescriptor, DescDevice << 8, 0, 4000})
	r.Seg[0] = Segment{Gref: 1, Offset: 4000, Length: 200}
	r.Seg[1] = Segment{Gref: 2, Length: 100}
	var got []string
	for _, e := range Anomalies(&r, 4) {
		got = append(got, errors.Unwrap(e).Error())
	}
	want := []string{ErrBadPort.Error(), ErrReservedBits.Error(), ErrUndefinedFlags.Error(), ErrSegmentCrossesPage.Error(), ErrControlLength.Error(), ErrBufferLength.Error()}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("anomalies:\n got %q\nwant %q", got, want)
	}
	if Anomalies(&URBRequest{Pipe: NewPipe(1, 2, 1, true, TypeBulk)}, 4) != nil {
		t.Error("anomalies on a clean zero-length bulk")
	}
}

func TestDecodeValidateAllocatesNothing(t *testing.T) {
	var r URBRequest
	r.ID, r.NrBufferSegs, r.BufferLength = 3, 1, 64
	r.Pipe = NewPipe(1, 0, 0, true, TypeCtrl)
	r.SetSetup(SetupPacket{0x80, ReqGetDescriptor, DescDevice << 8, 0, 64})
	r.Seg[0] = Segment{Gref: 7, Length: 64}
	var b [URBRequestSize]byte
	r.Encode(&b)
	var d URBRequest
	if n := testing.AllocsPerRun(1000, func() {
		d.Decode(&b)
		if Validate(&d, 8) != nil {
			panic("invalid")
		}
	}); n != 0 {
		t.Errorf("decode+validate allocates %v per request", n)
	}
}

func TestIsoFrameDescRoundTrip(t *testing.T) {
	d := IsoFrameDesc{Offset: 192, Length: 192, ActualLength: 100, Status: -18}
	var b [IsoFrameDescSize]byte
	d.Encode(&b)
	var e IsoFrameDesc
	e.Decode(&b)
	if e != d || b[12] != 0xee || b[15] != 0xff {
		t.Errorf("iso desc % x -> %+v", b, e)
	}
}

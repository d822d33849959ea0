package usbdesc

import (
	"bytes"
	"errors"
	"testing"
)

// A SanDisk-style mass-storage stick as usbfs returns it: device
// descriptor, then one configuration with a Bulk-Only interface.
var stick = []byte{
	18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x81, 0x07, 0x67, 0x55, 0x00, 0x01, 1, 2, 3, 1,
	9, 2, 32, 0, 1, 1, 0, 0x80, 50,
	9, 4, 0, 0, 2, 8, 6, 80, 0,
	7, 5, 0x81, 2, 0x00, 0x02, 0,
	7, 5, 0x02, 2, 0x00, 0x02, 0,
}

// An audio-style device: two configurations, the second with an
// interface of two alternate settings (alt 1 has an isochronous IN
// endpoint with a class-specific endpoint descriptor after it).
var audio = []byte{
	18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x34, 0x12, 0x78, 0x56, 0x01, 0x00, 0, 0, 0, 2,
	9, 2, 18, 0, 1, 1, 0, 0x80, 50,
	9, 4, 0, 0, 0, 0xff, 0, 0, 0,
	9, 2, 50, 0, 2, 2, 0, 0x80, 50,
	9, 4, 0, 0, 1, 3, 1, 1, 0,
	7, 5, 0x83, 3, 8, 0, 10,
	9, 4, 1, 0, 0, 1, 2, 0, 0,
	9, 4, 1, 1, 1, 1, 2, 0, 0,
	7, 5, 0x84, 0x05, 0xc0, 0x00, 1, // iso IN, 192 bytes
	7, 0x25, 1, 0, 0, 0, 0, // class-specific endpoint descriptor: skipped
}

func TestParseStick(t *testing.T) {
	d, cs, err := ParseAll(stick)
	if err != nil {
		t.Fatal(err)
	}
	if d.VID != 0x0781 || d.PID != 0x5567 || d.USB != 0x0200 || d.NumConfigs != 1 || d.Serial != 3 || d.MaxPacket0 != 64 {
		t.Fatalf("device %+v", d)
	}
	if len(cs) != 1 || cs[0].Value != 1 || cs[0].TotalLength != 32 || len(cs[0].Interfaces) != 1 {
		t.Fatalf("configs %+v", cs)
	}
	it := cs[0].Interfaces[0]
	if it.Class != 8 || it.SubClass != 6 || it.Protocol != 80 || len(it.Endpoints) != 2 {
		t.Fatalf("interface %+v", it)
	}
	if e := it.Endpoints[0]; e.Address != 0x81 || !e.In() || e.Type() != XferBulk || e.MaxPacket != 512 {
		t.Fatalf("endpoint %+v", e)
	}
}

func TestParseAlternateSettingsAndClassDescriptors(t *testing.T) {
	_, cs, err := ParseAll(audio)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Fatalf("%d configurations", len(cs))
	}
	c := cs[1]
	if got := c.InterfaceNumbers(); !bytes.Equal(got, []byte{0, 1}) {
		t.Fatalf("interface numbers %v", got)
	}
	if len(c.Interfaces) != 3 || c.Interfaces[2].Alt != 1 || len(c.Interfaces[2].Endpoints) != 1 {
		t.Fatalf("interfaces %+v", c.Interfaces)
	}
	e, ok := c.Endpoint(0x84)
	if !ok || e.Type() != XferIsoc || e.MaxPacket != 192 {
		t.Fatalf("iso endpoint %+v %v", e, ok)
	}
	if _, ok := c.Endpoint(0x02); ok {
		t.Fatal("found an endpoint that is not there")
	}
	if got := ConfigBytes(audio, 2); len(got) != 50 || got[5] != 2 {
		t.Fatalf("ConfigBytes(2) = %d bytes", len(got))
	}
	if ConfigBytes(audio, 7) != nil {
		t.Fatal("ConfigBytes of a missing configuration")
	}
}

func TestMalformed(t *testing.T) {
	mut := func(src []byte, f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), src...))
	}
	cases := map[string][]byte{
		"empty":                  nil,
		"short device":           stick[:17],
		"device type":            mut(stick, func(b []byte) []byte { b[1] = 2; return b }),
		"device bLength small":   mut(stick, func(b []byte) []byte { b[0] = 8; return b }),
		"total beyond the bytes": mut(stick, func(b []byte) []byte { b[20] = 200; return b }),
		"total below header":     mut(stick, func(b []byte) []byte { b[20] = 4; return b }),
		"bLength zero":           mut(stick, func(b []byte) []byte { b[27] = 0; return b }),
		"bLength past the end":   mut(stick, func(b []byte) []byte { b[43] = 9; return b }),
		"short interface":        mut(stick, func(b []byte) []byte { b[27] = 4; b[31] = 4; return b }),
		"endpoint before interface": mut(stick, func(b []byte) []byte {
			b[28] = 0x24 // the interface becomes class-specific
			return b
		}),
		"stray byte": append(mut(stick, func(b []byte) []byte { b[20] = 33; return b }), 1),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := ParseAll(b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestTooManyEndpointsRefused(t *testing.T) {
	b := []byte{9, 2, 0, 0, 1, 1, 0, 0x80, 50, 9, 4, 0, 0, 31, 0xff, 0, 0, 0}
	for i := 0; i < maxEndpoints+1; i++ {
		b = append(b, 7, 5, byte(i), 2, 64, 0, 0)
	}
	b[2], b[3] = byte(len(b)), byte(len(b)>>8)
	if _, _, err := ParseConfig(b); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
}

func TestStrings(t *testing.T) {
	for _, s := range []string{"", "pvusb", "Ünïcödé", "emoji 🙂 outside the BMP"} {
		got, err := String(EncodeString(s))
		if err != nil || got != s {
			t.Fatalf("%q: got %q, %v", s, got, err)
		}
	}
	long := bytes.Repeat([]byte("x"), 300)
	if b := EncodeString(string(long)); len(b) != 254 || b[0] != 254 {
		t.Fatalf("long string: %d bytes, bLength %d", len(b), b[0])
	}
	for _, b := range [][]byte{nil, {1, 3}, {4, 3, 'a'}, {4, 2, 'a', 0}} {
		if _, err := String(b); !errors.Is(err, ErrMalformed) {
			t.Fatalf("%v: err = %v", b, err)
		}
	}
	// An odd bLength drops the dangling byte, as Linux does.
	if s, err := String([]byte{5, 3, 'h', 0, 'i'}); err != nil || s != "h" {
		t.Fatalf("odd bLength: %q, %v", s, err)
	}
}

// FuzzParseAll: any bytes parse or fail cleanly; whatever parses is
// within the bytes given.
func FuzzParseAll(f *testing.F) {
	f.Add(stick)
	f.Add(audio)
	f.Fuzz(func(t *testing.T, b []byte) {
		d, cs, err := ParseAll(b)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("unwrapped error %v", err)
		}
		if len(cs) > int(d.NumConfigs) {
			t.Fatalf("%d configurations of %d", len(cs), d.NumConfigs)
		}
		total := 0
		for _, c := range cs {
			total += int(c.TotalLength)
			if len(c.Interfaces) > maxInterfaces {
				t.Fatal("interface bound broken")
			}
			for _, it := range c.Interfaces {
				if len(it.Endpoints) > maxEndpoints {
					t.Fatal("endpoint bound broken")
				}
			}
		}
		if len(cs) > 0 && DeviceSize+total > len(b) {
			t.Fatalf("configurations cover %d bytes of %d", DeviceSize+total, len(b))
		}
		_, _ = String(b)
	})
}

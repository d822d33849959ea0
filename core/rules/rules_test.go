package rules

import (
	"os"
	"strings"
	"testing"
)

func TestParseRules(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Rule
		err  string
	}{
		{in: "1-2.3:1:0:3", want: Rule{Device: "1-2.3", Dom: 1, VUSB: 0, Port: 3}},
		{in: "3-1:7:2:31", want: Rule{Device: "3-1", Dom: 7, VUSB: 2, Port: 31}},
		{in: "emu-msc:/var/lib/disk.img:1:0:1", want: Rule{Device: "emu-msc:/var/lib/disk.img", Dom: 1, Port: 1}},
		{in: "1-2.3:1:0:0", err: "port 0 outside"},
		{in: "1-2.3:1:0:32", err: "port 32 outside"},
		{in: "1-2.3:x:0:1", err: "must be numbers"},
		{in: "1-2.3:1:0", err: "want <busid>"},
		{in: "usb1:1:0:1", err: "not a busid"},
		{in: "1-2.:1:0:1", err: "not a busid"},
		{in: "emu-msc:1:0:1", err: "without its argument"},
		{in: "1-2.3:70000:0:1", err: "must be numbers"},
	} {
		got, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want || got.String() != tc.in {
			t.Errorf("%s: %+v %v (String %q)", tc.in, got, err, got.String())
		}
	}
	if k, a, ok := (Rule{Device: "emu-msc:/d.img"}).Emulated(); !ok || k != "msc" || a != "/d.img" {
		t.Error("Emulated")
	}
	if d, v, p, err := ParseKey("1:0:3"); err != nil || d != 1 || v != 0 || p != 3 {
		t.Error("ParseKey")
	}
}

func TestExampleConfig(t *testing.T) {
	c, err := Load("../../testdata/rules/example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Sim != "/run/pvusb-sim" || len(c.Controllers) != 1 || c.Controllers[0].Ports != 8 || !c.Controllers[0].Create || !c.Adopt || len(c.Parsed) != 5 {
		t.Fatalf("%+v", c)
	}
	if m := c.Parsed[4]; m.VID != 0x0781 || m.PID != 0x5567 || m.Serial != "4C530001" || m.Port != 2 || m.String() != "0781:5567/4C530001:1:0:2" {
		t.Errorf("match rule %+v", m)
	}
}

func TestStrictConfig(t *testing.T) {
	base := "[[controller]]\ndomid = 1\ndevid = 0\n"
	for _, tc := range []struct {
		src, err string
	}{
		{"simm = \"/x\"\n" + base, `line 1: unknown key "simm"`},
		{base + "portz = 8\n", `line 4: unknown key "controller.portz"`},
		{base + "ports = 32\n", "ports 32 outside"},
		{base + "usb-ver = 3\n", "usb-ver 3"},
		{"[[controller]]\ndomid = 0\n", "a guest domain is needed"},
		{base + base, "listed twice"},
		{base + "[[controller]]\ndomid = 2\nports = 2\n", ""},
		{"rules = [\"1-1:1:0:1\"]\n", "no controller dom1/0"},
		{"rules = [\"1-1:1:0:9\"]\n" + base, "port 9 of a 8-port controller"},
		{"rules = [\"1-1:1:0:1\", \"1-2:1:0:1\"]\n" + base, "already taken"},
		{"backend-type = \"xhci\"\n", "backend-type"},
		{base + "[[match]]\nvidpid = \"781:5567\"\ndomid = 1\nport = 1\n", "four hex digits"},
		{"rules = [1]\n", "rules"},
	} {
		_, err := Decode(tc.src)
		if tc.err == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.src, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: %v, want %q", tc.src, err, tc.err)
		}
	}
	if _, err := Load("/nonexistent/rules.toml"); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}

func TestAdoptLetsRulesNameControllersAhead(t *testing.T) {
	if _, err := Decode(`rules = ["1-1:3:0:1"]`); err == nil {
		t.Fatal("a rule for an unknown controller was accepted without adopt")
	}
	c, err := Decode("adopt = true\nrules = [\"1-1:3:0:1\"]\n")
	if err != nil || !c.Adopt || len(c.Parsed) != 1 || c.Parsed[0].Dom != 3 {
		t.Fatalf("%+v %v", c, err)
	}
}

package ringdump

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pvusb/pvusb/core/ringview"
)

var update = flag.Bool("update", false, "rewrite testdata/rings/*.golden and *.json from the current output")

const ringsDir = "../../testdata/rings"

// TestGoldenPages runs ringdump on every page in testdata/rings and
// compares the text and JSON with the committed goldens.
func TestGoldenPages(t *testing.T) {
	pages, _ := filepath.Glob(filepath.Join(ringsDir, "*.bin"))
	if len(pages) < 10 {
		t.Fatalf("only %d golden pages in %s; run go run ./testdata/gen", len(pages), ringsDir)
	}
	for _, page := range pages {
		base := strings.TrimSuffix(page, ".bin")
		for _, asJSON := range []bool{false, true} {
			var out bytes.Buffer
			if err := run(nil, &out, config{file: page, json: asJSON, ports: 8}); err != nil {
				t.Fatalf("%s: %v", page, err)
			}
			golden := base + ".golden"
			if asJSON {
				golden = base + ".json"
			}
			if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./applets/ringdump -update)", err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Errorf("%s differs from %s:\n%s", page, golden, out.String())
			}
		}
	}
}

// TestInvalidPagesFlagTheirAnomaly checks that each invalid-<what> page
// carries the anomaly its name promises, in the JSON.
func TestInvalidPagesFlagTheirAnomaly(t *testing.T) {
	pages, _ := filepath.Glob(filepath.Join(ringsDir, "invalid-*.bin"))
	if len(pages) < 6 {
		t.Fatalf("only %d invalid pages", len(pages))
	}
	codes := map[string]string{"conn-data": "unknown-port"}
	for _, page := range pages {
		what := strings.TrimPrefix(filepath.Base(page), "invalid-")
		what = what[:strings.Index(what, ".")]
		code := what
		if c, ok := codes[what]; ok {
			code = c
		}
		var out bytes.Buffer
		if err := run(nil, &out, config{file: page, json: true, ports: 8}); err != nil {
			t.Fatal(err)
		}
		var d ringview.Dump
		if err := json.Unmarshal(out.Bytes(), &d); err != nil {
			t.Fatal(err)
		}
		all := append([]string{}, d.Anomalies...)
		for _, r := range d.Requests {
			all = append(all, r.Anomalies...)
		}
		for _, r := range d.Responses {
			all = append(all, r.Anomalies...)
		}
		found := false
		for _, a := range all {
			found = found || strings.HasPrefix(a, code+":")
		}
		if !found {
			t.Errorf("%s: no %q anomaly in %q", page, code, all)
		}
	}
	// And the valid ones carry none.
	for _, name := range []string{"enumerate.urb.bin", "bulk-full.urb.bin", "unlink-wrap.urb.bin", "isoc-intr.urb.bin", "prepost.conn.bin"} {
		var out bytes.Buffer
		if err := run(nil, &out, config{file: filepath.Join(ringsDir, name), ports: 8}); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "anomalies: none") {
			t.Errorf("%s has anomalies:\n%s", name, out.String())
		}
	}
}

func TestJSONShape(t *testing.T) {
	var out bytes.Buffer
	if err := run(nil, &out, config{file: filepath.Join(ringsDir, "enumerate.urb.bin"), json: true, ports: 8}); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"kind", "req_prod", "req_event", "rsp_prod", "rsp_event", "size", "requests", "responses", "anomalies"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in the JSON", k)
		}
	}
	req := m["requests"].([]any)[0].(map[string]any)
	for _, k := range []string{"slot", "id", "port", "devnum", "endpoint", "type", "in", "unlink", "unlink_id", "transfer_flags", "buffer_length", "nr_buffer_segs", "setup", "segs"} {
		if _, ok := req[k]; !ok {
			t.Errorf("no %q in a request", k)
		}
	}
	if req["setup"] != "8006000200000900" || req["type"] != "ctrl" {
		t.Errorf("request %v", req)
	}
	rsp := m["responses"].([]any)[0].(map[string]any)
	for _, k := range []string{"slot", "id", "start_frame", "status", "actual_length", "error_count"} {
		if _, ok := rsp[k]; !ok {
			t.Errorf("no %q in a response", k)
		}
	}
	out.Reset()
	if err := run(nil, &out, config{file: filepath.Join(ringsDir, "prepost.conn.bin"), json: true, ports: 8}); err != nil {
		t.Fatal(err)
	}
	var d ringview.Dump
	json.Unmarshal(out.Bytes(), &d)
	if d.Kind != "conn" || len(d.Requests) != 511 || d.Responses[0].Portnum == nil || *d.Responses[0].Speed != 2 || d.Requests[0].Port != nil {
		t.Errorf("conn JSON %+v", d)
	}
	// The port-1 event was read and its slot re-posted: the credit (id 0,
	// at index 512) still carries the event's port and speed bytes.
	last := d.Requests[len(d.Requests)-1]
	if e := last.EarlierEvent; e == nil || e.Index != 0 || e.Portnum != 1 || e.Speed != 3 || last.Index != 512 {
		t.Errorf("earlier event in the re-posted slot: %+v", last)
	}
	for _, r := range d.Requests[:len(d.Requests)-1] {
		if r.EarlierEvent != nil {
			t.Errorf("slot %d never held a response but shows %+v", r.Slot, r.EarlierEvent)
		}
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, bytes.Repeat([]byte{0xA5}, n), 0o644)
		return p
	}
	for _, tc := range []struct {
		cfg  config
		want string
	}{
		{config{file: write("empty", 0), ports: 8}, "is empty"},
		{config{file: write("short", 4095), ports: 8}, "is truncated: 4095 bytes"},
		{config{file: write("long", 4097), ports: 8}, "is oversized"},
		{config{file: filepath.Join(dir, "missing"), ports: 8}, "no such file"},
		{config{file: write("page", 4096), kind: "blk", ports: 8}, `--kind "blk"`},
		{config{file: write("page2", 4096), ports: 0}, "num-ports 0"},
	} {
		err := run(nil, &bytes.Buffer{}, tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: error %v, want one line containing %q", tc.cfg, err, tc.want)
		}
	}
	// Garbage of the right size is a page: explained, never a panic.
	var out bytes.Buffer
	if err := run(strings.NewReader(strings.Repeat("\xff", 4096)), &out, config{ports: 31}); err != nil || !strings.Contains(out.String(), "header-padding") {
		t.Errorf("all-ones page: %v\n%s", err, out.String())
	}
}

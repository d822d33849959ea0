package usbback

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/vportctl"
	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	svc "github.com/pvusb/pvusb/core/usbback"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/xs"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func runVportctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	app := &cli.App{Name: "pvusb", Commands: []*cli.Command{vportctl.Command()}, Writer: &out, ErrWriter: &errb,
		ExitErrHandler: func(*cli.Context, error) {}}
	if err := app.Run(append([]string{"pvusb", "vportctl"}, args...)); err != nil {
		errb.WriteString(err.Error())
		return 1, out.String(), errb.String()
	}
	return 0, out.String(), errb.String()
}

func TestUsbbackAndVportctlOnTheSimulator(t *testing.T) {
	h := simtest.Start(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	os.WriteFile(img, make([]byte, 1<<20), 0o600)
	sock := filepath.Join(dir, "ctl", "usbback.sock")
	conf := filepath.Join(dir, "rules.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf("sim = %q\ncontrol = %q\n[[controller]]\ndomid = 1\ndevid = 0\nports = 2\ncreate = true\n", h.Dir(), sock)), 0o600)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logs syncBuffer
	ready := make(chan *svc.Service, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, &logs, conf, false, func(s *svc.Service) { ready <- s }) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("usbback: %v\n%s", err, logs.String())
	}

	// The guest: dom1 with an xen-hcd-style frontend behind the XenBus machine.
	d1 := simtest.Join(t, h, 1)
	c1, err := xs.Dial(sim.XenStorePath(h.Dir(), 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	front, err := fronttest.Connect(ctx, d1, c1, nil)
	if err != nil {
		t.Fatal(err)
	}

	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode: %v %v", st, err)
	}
	if code, _, e := runVportctl(t, "--socket", sock, "add", "emu-msc:"+img+":1:0:2"); code != 0 {
		t.Fatalf("vportctl add: %d %s\n%s", code, e, logs.String())
	}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 2 || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("plug event %+v %v", ev, err)
	}
	disk := &fronttest.BOT{F: front, Port: 2}
	if _, err := disk.Enumerate(ctx, 4); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runVportctl(t, "-s", sock, "list", "--json")
	var ports []svc.PortInfo
	if code != 0 || json.Unmarshal([]byte(out), &ports) != nil || len(ports) != 2 {
		t.Fatalf("list --json: %d %s", code, out)
	}
	if pi := ports[1]; pi.State != "plugged" || pi.VIDPID != "1209:0001" || pi.Product != "pvusb emulated disk" || pi.Speed != "high" || pi.URBs < 4 || pi.Device != "emu-msc:"+img {
		t.Errorf("port 2: %+v", pi)
	}
	if ports[0].State != "empty" {
		t.Errorf("port 1: %+v", ports[0])
	}
	if code, out, _ := runVportctl(t, "-c", conf, "list"); code != 0 || !strings.Contains(out, "1:0:2  plugged  high   1209:0001  pvusb emulated disk") {
		t.Errorf("list table:\n%s", out)
	}
	// Refusals: a bad rule, a taken port, a port beyond the controller.
	for _, bad := range [][]string{{"add", "nonsense"}, {"add", "emu-msc:" + img + ":1:0:2"}, {"add", "emu-msc:" + img + ":1:0:3"}, {"add", "emu-msc:" + img + ":7:0:1"}} {
		if code, _, e := runVportctl(t, append([]string{"-s", sock}, bad...)...); code == 0 || e == "" {
			t.Errorf("%v accepted", bad)
		}
	}
	if code, _, e := runVportctl(t, "-s", sock, "del", "1:0:2"); code != 0 {
		t.Fatalf("del: %s", e)
	}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 2 || ev.Speed != usbif.SpeedNone {
		t.Fatalf("unplug event %+v %v", ev, err)
	}
	// Replug works.
	if code, _, e := runVportctl(t, "-s", sock, "add", "emu-msc:"+img+":1:0:2"); code != 0 {
		t.Fatalf("re-add: %s", e)
	}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("replug event %+v %v", ev, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("usbback ended with %v", err)
	}
	for _, want := range []string{"usbback: serving", "xenbus backend: Connected", "usbback: rule added", "usbback: port emptied"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

func TestUsbbackRefusesBadConfig(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "rules.toml")
	os.WriteFile(conf, []byte("simm = \"/x\"\n"), 0o600)
	if err := run(context.Background(), &bytes.Buffer{}, conf, false, nil); err == nil || !strings.Contains(err.Error(), `line 1: unknown key "simm"`) {
		t.Errorf("bad config: %v", err)
	}
	if code, _, e := runVportctl(t, "-s", "/nonexistent/sock", "list"); code != 1 || !strings.Contains(e, "reach the daemon") {
		t.Errorf("vportctl without a daemon: %d %s", code, e)
	}
}

package usbback

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/xs"
)

const e2eSize = 64 << 20 // the 64 MiB of random data

func TestMain(m *testing.M) {
	if dir := os.Getenv("PVUSB_BENCH_DAEMON"); dir != "" {
		n, _ := strconv.Atoi(os.Getenv("PVUSB_BENCH_N"))
		if err := benchDaemonChild(dir, n); err != nil && err != context.Canceled {
			fmt.Fprintln(os.Stderr, "bench daemon:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if dir := os.Getenv("PVUSB_BENCH_FRONT"); dir != "" {
		if err := benchFrontChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "bench frontend:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if dir := os.Getenv("PVUSB_E2E_FRONT"); dir != "" {
		if err := frontendChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, "frontend:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// frontendChild is domain 1: the XenBus frontend machine, then the disk
// test, printing the checksum of what it wrote.
func frontendChild(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := sim.Join(dir, 1)
	if err != nil {
		return err
	}
	defer d.Close()
	c, err := xs.Dial(d.XenStorePath())
	if err != nil {
		return err
	}
	front, err := fronttest.Connect(ctx, d, c, func(cfg xenbus.BackendConfig) error {
		if cfg.NumPorts != 4 || cfg.USBVer != 2 {
			return fmt.Errorf("unexpected configuration %+v", cfg)
		}
		return nil
	})
	if err != nil {
		return err
	}
	ev, err := front.ConnEvent(ctx)
	if err != nil || ev.Port != 1 || ev.Speed != usbif.SpeedHigh {
		return fmt.Errorf("plug event %+v %v", ev, err)
	}
	disk := &fronttest.BOT{F: front, Port: 1}
	if _, err := disk.Enumerate(ctx, 2); err != nil {
		return err
	}
	if inq, st, err := disk.Command(ctx, []byte{0x12, 0, 0, 0, 36, 0}, true, nil, 36); err != nil || st != 0 || !strings.HasPrefix(string(inq[8:]), "pvusb") {
		return fmt.Errorf("INQUIRY %q %d %v", inq, st, err)
	}
	capa, _, err := disk.Command(ctx, []byte{0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0}, true, nil, 8)
	if err != nil || int(binary.BigEndian.Uint32(capa))+1 != e2eSize/512+16 {
		return fmt.Errorf("READ CAPACITY % x %v", capa, err)
	}
	data := make([]byte, e2eSize)
	rand.Read(data)
	t0 := time.Now()
	if err := disk.Write(ctx, 8, data); err != nil {
		return err
	}
	if _, st, err := disk.Command(ctx, []byte{0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false, nil, 0); err != nil || st != 0 {
		return fmt.Errorf("SYNCHRONIZE CACHE %d %v", st, err)
	}
	tw := time.Since(t0)
	h := sha256.New()
	t0 = time.Now()
	if err := disk.Read(ctx, 8, len(data), func(b []byte) { h.Write(b) }); err != nil {
		return err
	}
	tr := time.Since(t0)
	want := sha256.Sum256(data)
	if !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("read back differs from written")
	}
	fmt.Printf("SHA %s\nMBPS write %.1f read %.1f\n", hex.EncodeToString(want[:]),
		float64(e2eSize)/1e6/tw.Seconds(), float64(e2eSize)/1e6/tr.Seconds())
	return nil
}

// TestEndToEndOnTheSimulator: the backend service (dom0, this process)
// serves an emulated disk from rules.toml to a frontend in another
// process (dom1); 64 MiB of random data go through real shared memory,
// and the image file ends up holding exactly them.
func TestEndToEndOnTheSimulator(t *testing.T) {
	h := simtest.Start(t)
	d0 := simtest.Join(t, h, 0)
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, e2eSize+16*512), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := rules.Decode(fmt.Sprintf("rules = [%q]\n[[controller]]\ndomid = 1\ndevid = 0\nports = 4\ncreate = true\n", "emu-msc:"+img+":1:0:1"))
	if err != nil {
		t.Fatal(err)
	}
	svc := New(cfg, Platform{XS: c0, Mapper: grant.NewSimMapper(d0), BackDom: 0,
		Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d0), nil }}, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()

	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "PVUSB_E2E_FRONT="+h.Dir())
	var stderr bytes.Buffer
	child.Stderr = &stderr
	out, err := child.Output()
	if err != nil {
		t.Fatalf("frontend process: %v\n%s", err, stderr.String())
	}
	var sha string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "SHA":
			sha = f[1]
		case len(f) == 5 && f[0] == "MBPS":
			w, _ := strconv.ParseFloat(f[2], 64)
			r, _ := strconv.ParseFloat(f[4], 64)
			t.Logf("through the simulator: write %.1f MB/s, read %.1f MB/s (informational)", w, r)
		}
	}
	cancel()
	<-done // the service closes the disk: the image is synced
	file, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.Sum256(file[4096 : 4096+e2eSize])
	if sha == "" || hex.EncodeToString(got[:]) != sha {
		t.Fatalf("image holds sha %x, the frontend wrote %s", got, sha)
	}
	// The controller nodes were written as libxl writes them.
	be := "/local/domain/0/backend/vusb/1/0"
	if ps, err := c0.GetPerms(be); err != nil || ps[0].Dom != 0 || len(ps) < 2 || ps[1] != (xs.Perm{Dom: 1, Access: xs.AccessRead}) {
		t.Errorf("backend dir perms %v %v", ps, err)
	}
	if v, _ := c0.ReadString(be + "/port/1"); v != "emu-msc:"+img {
		t.Errorf("port/1 = %q", v)
	}
}

// Package e2e runs the real applets as separate processes on the
// simulated hypervisor: pvusb usbback in one, pvusb usbfront in another,
// this test as the guest's USB stack through usbfront's USB/IP export.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/applets"
	"github.com/pvusb/pvusb/applets/bench"
	"github.com/pvusb/pvusb/applets/demo"
	"github.com/pvusb/pvusb/applets/internal/spawn"
	"github.com/pvusb/pvusb/core/ctlsock"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/core/usbback"
	"github.com/pvusb/pvusb/core/usbip"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/xs"
)

// TestMain lets this binary be `pvusb` for the child processes.
func TestMain(m *testing.M) {
	if args := os.Getenv("PVUSB_E2E_ARGS"); args != "" {
		os.Exit(applets.Main(strings.Split(args, "\x1f"), os.Stdin, os.Stdout, os.Stderr, "test", "test"))
	}
	// `pvusb demo` starts its children as os.Executable() APPLET ...:
	// this binary, called with an applet's name.
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-") {
		os.Exit(applets.Main(append([]string{"pvusb"}, os.Args[1:]...), os.Stdin, os.Stdout, os.Stderr, "test", "test"))
	}
	os.Exit(m.Run())
}

// TestDemo runs `pvusb demo` (the README's first command's second half):
// every check must pass and the report must say what it measured.
func TestDemo(t *testing.T) {
	var out, progress bytes.Buffer
	if err := demo.Run(context.Background(), &out, &progress, 8, t.TempDir()); err != nil {
		t.Fatalf("demo: %v\n%s\n%s", err, progress.String(), out.String())
	}
	for _, want := range []string{"1209:0001", "identical: OK", `received "pvusb": OK`, "4096 bytes echoed", "p50", "all checks passed", "[8/8]"} {
		if !strings.Contains(out.String()+progress.String(), want) {
			t.Errorf("demo output lacks %q:\n%s\n%s", want, progress.String(), out.String())
		}
	}
}

// proc is a pvusb applet in its own process.
type proc struct {
	cmd *exec.Cmd
	log *bytes.Buffer
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PVUSB_E2E_ARGS="+strings.Join(append([]string{"pvusb"}, args...), "\x1f"))
	var log bytes.Buffer // read only once the child was waited for
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: &log}
	t.Cleanup(func() { p.kill(syscall.SIGKILL) })
	return p
}

func (p *proc) kill(sig syscall.Signal) {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Signal(sig)
		p.cmd.Wait()
	}
}

// eventually polls cond (bounded) for something another process does.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 1500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

func busids(addr string) string {
	var s []string
	for _, d := range spawn.Devlist(addr) {
		s = append(s, d.Busid)
	}
	return strings.Join(s, " ")
}

func importDev(t *testing.T, addr, busid string) *usbip.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	d, err := usbip.Import(c, busid)
	if err != nil {
		t.Fatal(err)
	}
	k := usbip.NewConn(c, d)
	t.Cleanup(func() { k.Close() })
	return k
}

// TestUsbfrontAgainstUsbbackSeparateProcesses: the whole product on the
// simulator. usbfront enumerates the disk, keyboard and serial port
// usbback serves; through usbfront's USB/IP export this test writes and
// reads the disk with checksums, gets a key press, echoes through the
// serial port, unplugs and replugs with vportctl, kills usbback
// mid-transfer (the transfers fail, usbfront reconnects to the restarted
// backend, the disk holds what was written), and kills usbfront (the
// backend lets go of every mapping).
func TestUsbfrontAgainstUsbbackSeparateProcesses(t *testing.T) {
	h := simtest.Start(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	f, _ := os.Create(img)
	f.Truncate(32 << 20)
	f.Close()
	fifo := filepath.Join(dir, "kbd.fifo")
	unix.Mkfifo(fifo, 0o600)
	tty := filepath.Join(dir, "ttyPV0")
	backSock := filepath.Join(dir, "back.sock")
	rulesPath := filepath.Join(dir, "rules.toml")
	os.WriteFile(rulesPath, []byte(fmt.Sprintf(`sim = %q
control = %q
rules = ["emu-msc:%s:1:0:1", "emu-kbd:%s:1:0:2", "emu-acm:%s:1:0:3"]
[[controller]]
domid = 1
devid = 0
ports = 4
create = true
`, h.Dir(), backSock, img, fifo, tty)), 0o600)
	back := start(t, "usbback", "-c", rulesPath)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	frontSock := filepath.Join(dir, "front.sock")
	front := start(t, "usbfront", "--sim", h.Dir(), "--domid", "1", "--export", "tcp:"+addr, "--vhci", "off", "--control", frontSock)
	eventually(t, "usbfront exports three devices", func() bool { return busids(addr) == "0-1 0-2 0-3" })

	// usbfront list shows them like lsusb.
	out := run(t, "usbfront", "list", "--control", frontSock)
	for _, want := range []string{"1209:0001", "pvusb emulated disk", "1209:0002", "1209:0004", "usbip 0-3"} {
		if !strings.Contains(out, want) {
			t.Errorf("usbfront list lacks %q:\n%s", want, out)
		}
	}

	// The disk: 4 MiB of random data written, read back, compared.
	disk := importDev(t, addr, "0-1")
	if r, _ := disk.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0); r.Status != 0 {
		t.Fatalf("SET_CONFIGURATION %d", r.Status)
	}
	data := make([]byte, 4<<20)
	rand.Read(data)
	dk := &usbip.Disk{K: disk, In: 1, Out: 2}
	for off := 0; off < len(data); off += 1 << 20 {
		if err := dk.Write(uint32(off/512), data[off:off+1<<20]); err != nil {
			t.Fatal(err)
		}
	}
	h1 := sha256.New()
	for off := 0; off < len(data); off += 1 << 20 {
		got, err := dk.Read(uint32(off/512), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		h1.Write(got)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h1.Sum(nil), want[:]) {
		t.Fatal("disk read back differs")
	}

	// The keyboard: a key typed into the fifo arrives as a boot report.
	kbd := importDev(t, addr, "0-2")
	kbd.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0)
	_, rep, _ := kbd.Submit(usbip.DirIn, 1, [8]byte{}, 0, 10, nil, 8, nil)
	w, _ := os.OpenFile(fifo, os.O_WRONLY, 0)
	w.WriteString("tap z\n")
	w.Close()
	if r := <-rep; r.Status != 0 || r.Data[2] != 0x1d {
		t.Fatalf("key report %+v", r)
	}

	// The serial port: ping out to the pty, pong back.
	ser := importDev(t, addr, "0-3")
	ser.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0)
	pty, err := os.OpenFile(tty, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pty.Close()
	if r, _ := ser.Do(usbip.DirOut, 2, [8]byte{}, []byte("ping"), 0); r.Status != 0 {
		t.Fatal(r.Status)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(pty, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("pty got %q %v", buf, err)
	}
	pty.Write([]byte("pong"))
	if r, _ := ser.Do(usbip.DirIn, 1, [8]byte{}, nil, 64); r.Status != 0 || string(r.Data) != "pong" {
		t.Fatalf("serial IN %+v", r)
	}

	// Hot-plug through vportctl: the keyboard leaves and comes back.
	call := func(op, rule string) {
		if _, err := usbback.Call(backSock, usbback.Request{Op: op, Rule: rule}); err != nil {
			t.Fatalf("vportctl %s %s: %v", op, rule, err)
		}
	}
	call("del", "1:0:2")
	eventually(t, "the keyboard leaves", func() bool { return busids(addr) == "0-1 0-3" })
	call("add", "emu-kbd:"+fifo+":1:0:2")
	eventually(t, "the keyboard comes back", func() bool { return busids(addr) == "0-1 0-2 0-3" })

	// usbback killed during a transfer: the reads in flight fail.
	fails, reading := make(chan error, 1), make(chan struct{})
	go func() {
		for n := 0; ; n++ {
			if _, err := dk.Read(0, 1<<20); err != nil {
				fails <- err
				return
			}
			if n == 0 {
				close(reading) // one read done, the next in flight: kill now
			}
		}
	}()
	select {
	case <-reading:
	case err := <-fails:
		t.Fatalf("reads failed before the backend was killed: %v", err)
	}
	back.kill(syscall.SIGKILL)
	select {
	case err := <-fails:
		t.Logf("transfer failed as the backend died: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("transfers kept succeeding with the backend dead")
	}
	// usbfront takes the dead connection's devices down...
	eventually(t, "usbfront withdraws the devices of the dead backend", func() bool { return busids(addr) == "" })
	// ...and when usbback restarts and writes the controller anew, reconnects.
	back = start(t, "usbback", "-c", rulesPath)
	eventually(t, "usbfront reconnects to the restarted backend", func() bool { return busids(addr) == "0-1 0-2 0-3" })
	disk2 := importDev(t, addr, "0-1")
	disk2.Do(usbip.DirOut, 0, [8]byte{0, 9, 1, 0, 0, 0, 0, 0}, nil, 0)
	dk2 := &usbip.Disk{K: disk2, In: 1, Out: 2}
	h2 := sha256.New()
	for off := 0; off < len(data); off += 1 << 20 {
		got, err := dk2.Read(uint32(off/512), 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		h2.Write(got)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h2.Sum(nil), want[:]) {
		t.Fatal("the disk is not consistent after the backend restarted")
	}

	// usbfront killed: the backend sees the domain go and lets go of the rings.
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	be := xenbus.NewPaths(1, 0, 0, "vusb").Backend
	eventually(t, "backend connected", func() bool { st, _ := xenbus.ReadState(c0.Handle, be); return st == xenbus.Connected })
	if h.Mappings(0) == 0 {
		t.Fatal("the backend maps no rings while connected")
	}
	front.kill(syscall.SIGKILL)
	eventually(t, "the backend releases every mapping", func() bool { return h.Mappings(0) == 0 })
	eventually(t, "the backend goes Closed", func() bool { st, _ := xenbus.ReadState(c0.Handle, be); return st == xenbus.Closed })
	back.kill(syscall.SIGTERM)
	if strings.Contains(back.log.String(), "panic") || strings.Contains(front.log.String(), "panic") {
		t.Fatalf("a panic:\n%s\n%s", back.log.String(), front.log.String())
	}
	var rsp usbback.Response
	_ = ctlsock.Call(backSock, usbback.Request{Op: "list"}, &rsp)
}

// TestBench runs `pvusb bench` briefly: every measurement is there, with
// its reference and ratio (the figures themselves are not asserted).
func TestBench(t *testing.T) {
	var progress bytes.Buffer
	rs, err := bench.Run(context.Background(), &progress, 100*time.Millisecond, "")
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	names := map[string]bench.Result{}
	for _, r := range rs {
		names[r.Name] = r
	}
	for _, n := range []string{"ring, empty URBs (null device)", "ring, 64 KiB URBs (null device)", "emulated disk, 1024 KiB READ(10)",
		"USB/IP export, 64 KiB READ(10), loopback", "usbfront resident memory", "usbback resident memory", "host device, 64 KiB READ(10)"} {
		if _, ok := names[n]; !ok {
			t.Errorf("no %q in %+v", n, rs)
		}
	}
	for _, n := range []string{"ring, 64 KiB URBs (null device)", "emulated disk, 1024 KiB READ(10)", "USB/IP export, 64 KiB READ(10), loopback"} {
		if r := names[n]; r.Value <= 0 || r.RefValue <= 0 || r.Ratio <= 0 {
			t.Errorf("%s: %+v", n, r)
		}
	}
	var table, js bytes.Buffer
	bench.Print(&table, rs, false)
	bench.Print(&js, rs, true)
	if !strings.Contains(table.String(), "RATIO") || !strings.Contains(js.String(), `"ratio"`) {
		t.Errorf("output:\n%s\n%s", table.String(), js.String())
	}
}

// run runs an applet to completion in a child and returns its output.
func run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PVUSB_E2E_ARGS="+strings.Join(append([]string{"pvusb"}, args...), "\x1f"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pvusb %v: %v\n%s", args, err, out)
	}
	return string(out)
}

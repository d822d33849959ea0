// Package ctest builds and runs small C programs inside Go tests, so the
// Xen C headers (Debian's libxen-dev) and ring.h's own macros serve as the
// oracle for pvusb's wire layouts and ring logic.
//
// A missing compiler or header fails the test with the package to install:
// these tests prove wire compatibility and must not pass by skipping.
package ctest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Header names the headers whose absence explains a build failure.
var Header = []string{"/usr/include/xen/io/usbif.h", "/usr/include/xen/io/ring.h", "/usr/include/xen/io/xs_wire.h"}

// Build compiles src (a complete C program) and returns the executable's path.
func Build(t testing.TB, name, src string, cflags ...string) string {
	t.Helper()
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc not found: install gcc (apt-get install gcc); the C headers are this test's oracle")
	}
	for _, h := range Header {
		if _, err := os.Stat(h); err != nil {
			t.Fatalf("%s missing: install Debian's libxen-dev (apt-get install libxen-dev)", h)
		}
	}
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, name)
	args := append([]string{"-O2", "-Wall", "-Werror", "-o", exe, c}, cflags...)
	if out, err := exec.Command(cc, args...).CombinedOutput(); err != nil {
		t.Fatalf("compile %s: %v\n%s", name, err, out)
	}
	return exe
}

// Values runs a built program that prints "name value" lines (decimal or
// 0x hex) and returns them as a map.
func Values(t testing.TB, exe string) map[string]int64 {
	t.Helper()
	out, err := exec.Command(exe).Output()
	if err != nil {
		t.Fatalf("run %s: %v", exe, err)
	}
	vals := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			t.Fatalf("bad line from %s: %q", exe, sc.Text())
		}
		v, err := strconv.ParseInt(f[1], 0, 64)
		if err != nil {
			t.Fatalf("bad value from %s: %q", exe, sc.Text())
		}
		vals[f[0]] = v
	}
	return vals
}

// Compare fails for every name in want whose C value differs, and for
// every C value the test forgot to compare (so new lines cannot rot).
func Compare(t testing.TB, c map[string]int64, want map[string]int64) {
	t.Helper()
	for name, w := range want {
		got, ok := c[name]
		if !ok {
			t.Errorf("%s: not printed by the C program", name)
			continue
		}
		if got != w {
			t.Errorf("%s: C says %d (0x%x), Go has %d (0x%x)", name, got, got, w, w)
		}
	}
	for name := range c {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: printed by C but not compared by the Go test", name)
		}
	}
}

// Hex runs a built program that prints "name 0x<hex bytes>" lines and
// returns the decoded bytes by name.
func Hex(t testing.TB, exe string) map[string][]byte {
	t.Helper()
	return HexArgs(t, exe)
}

// HexArgs is Hex with arguments for the program.
func HexArgs(t testing.TB, exe string, args ...string) map[string][]byte {
	t.Helper()
	out, err := exec.Command(exe, args...).Output()
	if err != nil {
		t.Fatalf("run %s: %v", exe, err)
	}
	m := map[string][]byte{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || !strings.HasPrefix(f[1], "0x") {
			t.Fatalf("bad line from %s: %q", exe, line)
		}
		h := f[1][2:]
		b := make([]byte, len(h)/2)
		for i := range b {
			v, err := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
			if err != nil {
				t.Fatalf("bad hex from %s: %q", exe, line)
			}
			b[i] = byte(v)
		}
		m[f[0]] = b
	}
	return m
}

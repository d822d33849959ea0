package xs

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// xsTool runs one of Debian's xenstore-utils against our server.
func xsTool(t *testing.T, sock string, args ...string) (string, error) {
	t.Helper()
	path, err := exec.LookPath(args[0])
	if err != nil {
		t.Fatalf("%s not found: install Debian's xenstore-utils (./build.sh deps)", args[0])
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Env = append(os.Environ(), "XENSTORED_PATH="+sock)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustTool(t *testing.T, sock string, args ...string) string {
	t.Helper()
	out, err := xsTool(t, sock, args...)
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return out
}

// TestDebianXenstoreUtils drives xenstore-write, -read, -ls, -list, -rm,
// -chmod, -exists and -watch from Debian's xenstore-utils against our
// server and checks what they print, and that our client and the tools
// read each other's writes.
func TestDebianXenstoreUtils(t *testing.T) {
	_, sock, c := testServer(t, DefaultQuotas)

	mustTool(t, sock, "xenstore-write", "/local/domain/1/device/vusb/0/state", "1", "/test/a", "hello")
	if v, err := c.ReadString("/test/a"); err != nil || v != "hello" {
		t.Fatalf("client reads tool's write: %q %v", v, err)
	}
	if err := c.WriteString("/test/b", "from go"); err != nil {
		t.Fatal(err)
	}
	if out := mustTool(t, sock, "xenstore-read", "/test/b"); out != "from go\n" {
		t.Errorf("xenstore-read: %q", out)
	}
	if out := mustTool(t, sock, "xenstore-list", "/test"); out != "a\nb\n" {
		t.Errorf("xenstore-list: %q", out)
	}
	want := "local = \"\"\n domain = \"\"\n  0 = \"\"\n  1 = \"\"\n   device = \"\"\n    vusb = \"\"\n     0 = \"\"\n      state = \"1\"\n"
	if out := mustTool(t, sock, "xenstore-ls", "/"); !strings.HasPrefix(out, want) || !strings.Contains(out, "test = \"\"\n a = \"hello\"\n b = \"from go\"\n") {
		t.Errorf("xenstore-ls:\n%s", out)
	}

	mustTool(t, sock, "xenstore-chmod", "/test/a", "n1", "r2")
	if ps, err := c.GetPerms("/test/a"); err != nil || len(ps) != 2 || ps[0] != (Perm{1, AccessNone}) || ps[1] != (Perm{2, AccessRead}) {
		t.Errorf("perms after xenstore-chmod: %v %v", ps, err)
	}
	if out := mustTool(t, sock, "xenstore-ls", "-p", "/test"); !strings.Contains(out, "(n1,r2)") {
		t.Errorf("xenstore-ls -p:\n%s", out)
	}
	if err := c.SetPerms("/test/b", Perm{0, AccessNone}, Perm{3, AccessBoth}); err != nil {
		t.Fatal(err)
	}
	if out := mustTool(t, sock, "xenstore-ls", "-p", "/test"); !strings.Contains(out, "(n0,b3)") {
		t.Errorf("xenstore-ls -p after our set-perms:\n%s", out)
	}

	if _, err := xsTool(t, sock, "xenstore-exists", "/test/a"); err != nil {
		t.Errorf("xenstore-exists of a node: %v", err)
	}
	if _, err := xsTool(t, sock, "xenstore-exists", "/test/nope"); err == nil {
		t.Error("xenstore-exists of a missing node succeeded")
	}

	// xenstore-watch prints the initial event and then our write.
	w, _ := xsToolStart(t, sock, "xenstore-watch", "-n", "2", "/watched")
	line := w.next(t)
	if line != "/watched" {
		t.Fatalf("first watch line %q", line)
	}
	if err := c.WriteString("/watched/x", "1"); err != nil {
		t.Fatal(err)
	}
	if line = w.next(t); line != "/watched/x" {
		t.Errorf("second watch line %q", line)
	}
	w.wait(t)

	mustTool(t, sock, "xenstore-rm", "/test")
	if ok, err := c.Exists("/test/a"); ok || err != nil {
		t.Errorf("after xenstore-rm: exists %v, %v", ok, err)
	}
	if out, err := xsTool(t, sock, "xenstore-read", "/test/a"); err == nil {
		t.Errorf("xenstore-read of a removed node: %q", out)
	}
}

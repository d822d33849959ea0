package xs

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

type toolProc struct {
	cmd   *exec.Cmd
	lines chan string
}

// xsToolStart starts a long-running tool (xenstore-watch) and hands its
// output lines over a channel.
func xsToolStart(t *testing.T, sock string, args ...string) (*toolProc, io.Reader) {
	t.Helper()
	path, err := exec.LookPath(args[0])
	if err != nil {
		t.Fatalf("%s not found: install Debian's xenstore-utils", args[0])
	}
	cmd := exec.Command(path, args[1:]...)
	cmd.Env = append(os.Environ(), "XENSTORED_PATH="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := &toolProc{cmd: cmd, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p, out
}

func (p *toolProc) next(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			t.Fatal("tool exited")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no output from the tool within 10s")
	}
	return ""
}

func (p *toolProc) wait(t *testing.T) {
	t.Helper()
	for range p.lines {
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("tool: %v", err)
	}
}

package sim

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	csim "github.com/pvusb/pvusb/core/sim"
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

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSimAppletServesXenStoreToolsAndDomains(t *testing.T) {
	dir := t.TempDir()
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	readyc := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, &logs, config{dir: dir}, func(*csim.Hypervisor) { close(readyc) }) }()
	select {
	case <-readyc:
	case err := <-errc:
		t.Fatal(err)
	}

	d, err := csim.Join(dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	c, err := xs.Dial(d.XenStorePath())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteString("data/hello", "from dom3"); err != nil {
		t.Fatal(err)
	}
	c.Close()

	tool, err := exec.LookPath("xenstore-ls")
	if err != nil {
		t.Fatal("xenstore-ls not found: install Debian's xenstore-utils")
	}
	cmd := exec.Command(tool, "/local/domain/3")
	cmd.Env = append(os.Environ(), "XENSTORED_PATH="+dir+"/xenstored.sock")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), `hello = "from dom3"`) {
		t.Errorf("xenstore-ls through XENSTORED_PATH: %v\n%s", err, out)
	}
	d.Close()
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("sim did not stop")
	}
	for _, want := range []string{"sim: serving", "sim: domain joined", "dom=3", "sim: domain left"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}
